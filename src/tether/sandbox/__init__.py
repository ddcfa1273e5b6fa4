"""A private "customer machine" on this host, for tests and ``tether demo``.

``Sandbox`` makes Linux namespaces in which real ``useradd``, ``sudo`` and a stock
``sshd`` run against a private copy of /etc and private /home, /run, /var/log... kept in
a directory the caller gives; the host's own files, users and sshd are never touched.
The machine has only a loopback interface: nothing on the host can connect in, and
*uplinks* let it connect out to chosen ports on the host's 127.0.0.1.

Modules: :mod:`~tether.sandbox.machine` (the host side, the API below),
:mod:`~tether.sandbox.init` (pid 1 inside: mounts, sshd), :mod:`~tether.sandbox.uplink`
(the TCP-over-Unix-socket forwarders), :mod:`~tether.sandbox.layout` (shared paths).
"""

from tether.sandbox.machine import Sandbox, SandboxUnavailable, sandbox_unavailable_reason

__all__ = ["Sandbox", "SandboxUnavailable", "sandbox_unavailable_reason"]
