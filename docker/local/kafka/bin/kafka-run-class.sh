#!/bin/bash
# java with the image's jars; the broker logs at INFO, the command-line tools at WARN.
exec java ${KAFKA_HEAP_OPTS:-} ${KAFKA_OPTS:-} -Dkafka.log.level="${KAFKA_LOG_LEVEL:-WARN}" \
    -Dlog4j2.configurationFile=/opt/kafka/log4j2.properties -cp '/opt/kafka/libs/*' "$@"
