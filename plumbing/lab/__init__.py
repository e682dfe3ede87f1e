"""Labs that live in throwaway namespaces: the sandbox lab, the guided walk, their echo server and probe."""
