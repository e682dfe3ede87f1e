"""Many hosts in one view: the agent each host runs (its API, its metrics), and how a
dashboard finds the agents in a Kubernetes cluster."""
