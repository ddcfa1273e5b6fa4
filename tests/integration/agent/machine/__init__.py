"""Integration tests of tether.agent.machine.system.SystemMachine in a sandboxed machine."""
