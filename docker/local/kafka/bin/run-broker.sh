#!/bin/bash
# server.properties from the KAFKA_* variables (the official image's naming rule), a formatted log
# directory, then the broker in the foreground.
set -euo pipefail
: "${CLUSTER_ID:?set CLUSTER_ID (kafka-storage.sh random-uuid)}"
properties=/opt/kafka/config/server.properties
: > "${properties}"
for variable in $(compgen -e | grep '^KAFKA_'); do
    case "${variable}" in
        KAFKA_HEAP_OPTS | KAFKA_OPTS | KAFKA_LOG_LEVEL | KAFKA_JVM_PERFORMANCE_OPTS | KAFKA_LOG4J_OPTS) continue ;;
    esac
    name="${variable#KAFKA_}"
    name="${name,,}"
    name="${name//___/-}"
    name="${name//__/@}"
    name="${name//_/.}"
    echo "${name//@/_}=${!variable}" >> "${properties}"
done
/opt/kafka/bin/kafka-run-class.sh kafka.tools.StorageTool format --ignore-formatted \
    --cluster-id "${CLUSTER_ID}" --config "${properties}"
KAFKA_LOG_LEVEL=INFO exec /opt/kafka/bin/kafka-run-class.sh kafka.Kafka "${properties}"
