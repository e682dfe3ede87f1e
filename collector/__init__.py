"""Read side: kernel -> one immutable Snapshot."""
