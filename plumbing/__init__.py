"""Write side: bridges, containers, NAT and port forwards, done as Docker does."""
