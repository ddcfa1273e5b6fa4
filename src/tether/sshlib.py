"""asyncssh, imported once for all of Tether with its known import-time noise silenced.

asyncssh 2.24 builds type aliases over ``cryptography``'s DSA classes when it is
imported, and cryptography 51 deprecates DSA with a ``CryptographyDeprecationWarning``
(a ``UserWarning``). Users did not cause it and cannot act on it, so it is silenced here,
for that category and for asyncssh's own modules only, while asyncssh is imported.
Every other warning, from asyncssh or anywhere else, still reaches the user (and fails
the test suite, which turns warnings into errors).

Import asyncssh as ``from tether.sshlib import asyncssh``.
"""

from __future__ import annotations

import warnings

from cryptography.utils import CryptographyDeprecationWarning

with warnings.catch_warnings():
    warnings.filterwarnings(
        "ignore", category=CryptographyDeprecationWarning, module=r"asyncssh(\.|$)"
    )
    import asyncssh as asyncssh

__all__ = ["asyncssh"]
