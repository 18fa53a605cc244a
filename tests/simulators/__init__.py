"""Wire-faithful stand-ins for commercial APIs, run as real servers on loopback."""
