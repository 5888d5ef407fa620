/* amqp_out.c - stub, being written. */
