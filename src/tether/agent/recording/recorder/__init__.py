"""The session recorder, run by sshd as the support account: standard library only.

``python -m tether.agent.recording.recorder`` runs :func:`~.session.main`. Nothing in
this package may import from outside it but the standard library: sshd starts it under
any Python 3.11+ the support account can execute, from a copy of this package alone
when Tether's install is out of that account's reach (see
:mod:`tether.agent.machine.recorder_setup`). ``tests/unit/test_layout.py`` checks it.
"""
