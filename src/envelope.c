/* envelope.c - stub, being written. */
