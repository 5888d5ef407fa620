/* bridge.c - stub, being written. */
