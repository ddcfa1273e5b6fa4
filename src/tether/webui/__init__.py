"""What the customer's page and the vendor console share: security plumbing, assets, layout.

Both are server-rendered (Jinja2) FastAPI apps with a little htmx for the live parts.
Every asset is vendored into the package (``static/``: htmx and its licence, one style
sheet, one small script), so the pages work without a network and nothing is loaded
from a CDN. :mod:`tether.webui.security` holds the CSRF, cookie and header rules.
"""

from __future__ import annotations

from pathlib import Path

#: The shared static files (served under ``/static/ui``) and templates.
STATIC_DIR = Path(__file__).parent / "static"
TEMPLATES_DIR = Path(__file__).parent / "templates"
