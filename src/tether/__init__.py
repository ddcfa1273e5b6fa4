"""Tether: temporary, customer-controlled support access over SSH.

Parts (see SPEC.md): ``agent`` (customer machine), ``relay`` (vendor DMZ),
``vendor`` (vendor service), ``engineer`` (engineer CLI). ``keys`` and ``certs``
are the pure identity core shared by all of them; ``store`` holds shared state.
"""

__version__ = "0.1.0"
