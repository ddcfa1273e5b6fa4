"""The vendor service: authority over keys and certificates, later its HTTP API and console."""
