"""The customer side: access state, tunnel to the relay, daemon and its control socket."""
