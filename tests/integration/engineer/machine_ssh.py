"""A stand-in for a machine's sshd: an asyncssh server trusting the vendor CA for the support account.

Like the agent's sshd drop-in, it accepts only certificates from the engineer CA whose
principals name the support account; it answers commands, SFTP and SCP (in a directory
of the test's own), so stock ``ssh``, ``scp`` and ``sftp`` can be shown to work through
the relay with the configuration ``tether ssh-config`` writes. It listens on an
OS-picked loopback port that the tether key allows.
"""

from __future__ import annotations

from pathlib import Path
from types import TracebackType

from tether.sshlib import asyncssh


class MachineSSH:
    """An SSH server on 127.0.0.1:<port> for ``account``, trusting ``ca_public`` certificates.

    :param ca_public: the engineer CA's public key line.
    :param account: the support account (the only user that may log in).
    :param files: the directory SFTP and SCP serve.
    """

    def __init__(self, ca_public: str, account: str, files: Path) -> None:
        self.ca_public = ca_public
        self.account = account
        self.files = files
        self.host_key = asyncssh.generate_private_key("ssh-ed25519")
        self.logins: list[str] = []
        self._server: asyncssh.SSHAcceptor | None = None

    async def __aenter__(self) -> MachineSSH:
        self.files.mkdir(parents=True, exist_ok=True)
        authorized = asyncssh.import_authorized_keys(
            f'cert-authority,principals="{self.account}" {self.ca_public}\n'
        )
        machine = self

        class Server(asyncssh.SSHServer):
            def begin_auth(self, username: str) -> bool:
                if username != machine.account:
                    raise asyncssh.PermissionDenied(f"no user {username}")
                return True

            def auth_completed(self) -> None:
                machine.logins.append(machine.account)

        async def command(process: asyncssh.SSHServerProcess[str]) -> None:
            process.stdout.write(f"machine says hello to {process.get_extra_info('username')}\n")
            process.exit(0)

        self._server = await asyncssh.create_server(
            Server,
            "127.0.0.1",
            0,
            server_host_keys=[self.host_key],
            authorized_client_keys=authorized,
            process_factory=command,
            sftp_factory=lambda chan: asyncssh.SFTPServer(chan, chroot=bytes(self.files)),
            allow_scp=True,
        )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    @property
    def port(self) -> int:
        """The port it listens on."""
        if self._server is None:
            raise RuntimeError("not started")
        return int(self._server.sockets[0].getsockname()[1])
