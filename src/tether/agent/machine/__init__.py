"""Every change Tether makes to the customer's machine, in one place.

The access state machine (:mod:`tether.agent.access`) decides; this package acts.
:mod:`~tether.agent.machine.effects` is the contract (what may change, no I/O) and
:mod:`~tether.agent.machine.system` its implementation on a real system, built from
the support account (:mod:`~tether.agent.machine.account`), sshd's configuration
(:mod:`~tether.agent.machine.sshd`), the session recorder's command
(:mod:`~tether.agent.machine.recorder_setup`), file plumbing with an undo journal
(:mod:`~tether.agent.machine.files`) and the checks a grant passes first
(:mod:`~tether.agent.machine.grant`). Live support sessions are listed and ended by
:mod:`~tether.agent.machine.sessions`, and ``tether agent install`` writes the
service units and expiry timer in :mod:`~tether.agent.machine.service`. Nothing
outside this package writes under /etc, touches accounts or signals processes.
"""
