"""The edge of the read side: what is read from the kernel, and how a namespace is entered."""
