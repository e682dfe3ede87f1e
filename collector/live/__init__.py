"""The live view: the Watcher turns kernel events into re-reads and deltas; the fan-out feeds subscribers."""
