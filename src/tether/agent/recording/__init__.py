"""Session recording: every support session on the machine, kept where the customer reads it.

:mod:`~tether.agent.recording.recorder` is what sshd runs (``ForceCommand``) as the
support account for each session. It may import only the standard library and its own
package (a test holds it to that), because it runs under whatever Python the account
can execute, from a copy of just that package when Tether's own install is private.
:mod:`~tether.agent.recording.catalog` lists, reads and retains the recordings (for the
CLI, the page and the daemon), and :mod:`~tether.agent.recording.watch` is the agent
daemon's side: audit each session, take its files over, retain, notify.
"""
