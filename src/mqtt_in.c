/* mqtt_in.c - stub, being written. */
