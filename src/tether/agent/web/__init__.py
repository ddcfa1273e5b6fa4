"""The customer's admin page, served by ``tether agent serve`` (see :mod:`.app`)."""
