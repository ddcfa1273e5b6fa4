"""Engineer tools: login, ssh-config, web."""
