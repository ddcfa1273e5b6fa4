"""Engineer tools: ``tether login``, ``ssh-config``, ``web``, ``ls``.

* :mod:`~tether.engineer.state` — the state directory (``~/.config/tether``), its files
  and modes, and the certificate-expiry check every command makes;
* :mod:`~tether.engineer.client` — the vendor service's HTTP API (login, certificates,
  tethers), failures in plain words;
* :mod:`~tether.engineer.identity` — the engineer's SSH key (theirs or generated);
* :mod:`~tether.engineer.login` — the login flow (password, TOTP, certificate);
* :mod:`~tether.engineer.sshconfig` — the OpenSSH configuration and ``Include`` (pure);
* :mod:`~tether.engineer.web` — a local port through the relay (asyncssh client);
* :mod:`~tether.engineer.tethers` — live tethers for ``tether ls``.
"""
