"""Integration tests of tether.agent.machine.SystemMachine in a sandboxed machine."""
