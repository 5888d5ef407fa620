/* topic.c - stub, being written: see include/mqtt2amqp/topic.h. */
#include "mqtt2amqp/topic.h"

int m2a_topic_filter_validate(const char *filter, char *err, size_t errlen)
{
    (void)filter;
    (void)err;
    (void)errlen;
    return 0;
}

int m2a_topic_filter_wildcards(const char *filter)
{
    int n = 0;
    for (; *filter; filter++)
        n += (*filter == '+' || *filter == '#');
    return n;
}
