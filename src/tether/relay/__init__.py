"""The relay: SSH server for tethers and engineers; routing is pure, the server is the edge."""
