"""The vendor console: the vendor's web page of tethers, cases, keys, engineers and audit.

Mounted under ``/console`` in the vendor service's app (:func:`mount_console`). It has
no logic of its own: every action calls the JSON API's own endpoint function
(:mod:`tether.vendor_service.api`, :mod:`tether.vendor_service.api_admin`) with the logged-in engineer,
so issuing, revoking, approving and revealing behave — and are audited — exactly as
over the API. Login is the API's login (argon2 password, TOTP when enabled, the same
failure limit); the API's session token is kept in an ``HttpOnly``, ``SameSite=Strict``
cookie, and every POST carries a CSRF token derived from it.
"""

from __future__ import annotations

from tether.vendor_service.console.routes import mount_console

__all__ = ["mount_console"]
