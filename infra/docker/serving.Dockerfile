# The real TensorFlow Serving with leukoflow's serving configuration baked in,
# for hosts without Kubernetes (on Kubernetes, infra/k8s/serving mounts the same
# files from a ConfigMap). The model store is mounted, never copied:
#   docker build -f infra/docker/serving.Dockerfile -t leukemia-serving:2.21.0 .
#   docker run -p 8500:8500 -p 8501:8501 -v "$LEUKOFLOW_HOME/models:/models:ro" leukemia-serving:2.21.0
# Pinned to the release matching tensorflow-serving-api in requirements.lock.
FROM tensorflow/serving:2.21.0
COPY serving/models.config serving/batching.config serving/monitoring.config /config/
# Unprivileged: the model store only needs to be readable.
USER 65534:65534
EXPOSE 8500 8501
VOLUME ["/models"]
ENTRYPOINT ["/usr/bin/tensorflow_model_server"]
CMD ["--port=8500", \
     "--rest_api_port=8501", \
     "--model_config_file=/config/models.config", \
     "--model_config_file_poll_wait_seconds=60", \
     "--allow_version_labels_for_unavailable_models=true", \
     "--file_system_poll_wait_seconds=30", \
     "--enable_batching=true", \
     "--batching_parameters_file=/config/batching.config", \
     "--monitoring_config_file=/config/monitoring.config", \
     "--enable_model_warmup=true"]
