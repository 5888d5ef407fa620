/* spool.c - stub, being written. */
