"""TF Serving's BatchingParameters and MonitoringConfig messages, which the tensorflow-serving-api wheel does not ship.

Built from the field names, numbers and types of tensorflow_serving/servables/tensorflow/session_bundle_config.proto
and tensorflow_serving/config/monitoring_config.proto (same package, same message names), so a text proto that
parses here parses in `tensorflow_model_server`. ModelServerConfig comes from the wheel itself.
"""

from __future__ import annotations

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, wrappers_pb2

_F = descriptor_pb2.FieldDescriptorProto


def _field(name: str, number: int, ftype: int, type_name: str = "", repeated: bool = False) -> _F:
    label = _F.LABEL_REPEATED if repeated else _F.LABEL_OPTIONAL
    field = _F(name=name, number=number, type=ftype, label=label)
    if type_name:  # only message fields name a type; setting it on scalars is invalid
        field.type_name = type_name
    return field


def _build() -> dict[str, type]:
    pool = descriptor_pool.DescriptorPool()
    pool.AddSerializedFile(wrappers_pb2.DESCRIPTOR.serialized_pb)

    batching = descriptor_pb2.FileDescriptorProto(
        name="tensorflow_serving/servables/tensorflow/session_bundle_config.proto",
        package="tensorflow.serving",
        syntax="proto3",
        dependency=["google/protobuf/wrappers.proto"],
    )
    msg = batching.message_type.add(name="BatchingParameters")
    i64, sv = ".google.protobuf.Int64Value", ".google.protobuf.StringValue"
    msg.field.extend(
        [
            _field("max_batch_size", 1, _F.TYPE_MESSAGE, i64),
            _field("batch_timeout_micros", 2, _F.TYPE_MESSAGE, i64),
            _field("max_enqueued_batches", 3, _F.TYPE_MESSAGE, i64),
            _field("num_batch_threads", 4, _F.TYPE_MESSAGE, i64),
            _field("thread_pool_name", 5, _F.TYPE_MESSAGE, sv),
            _field("allowed_batch_sizes", 6, _F.TYPE_INT64, repeated=True),
            _field("pad_variable_length_inputs", 7, _F.TYPE_BOOL),
            # Types as TF Serving reads them (bundle_factory_util.h: .has_...() and .value()); the text format
            # goes by name, so these two field numbers are not checked against the real proto.
            _field("max_execution_batch_size", 8, _F.TYPE_MESSAGE, i64),
            _field("enable_large_batch_splitting", 9, _F.TYPE_MESSAGE, ".google.protobuf.BoolValue"),
        ]
    )
    pool.Add(batching)

    monitoring = descriptor_pb2.FileDescriptorProto(
        name="tensorflow_serving/config/monitoring_config.proto", package="tensorflow.serving", syntax="proto3"
    )
    prom = monitoring.message_type.add(name="PrometheusConfig")
    prom.field.extend([_field("enable", 1, _F.TYPE_BOOL), _field("path", 2, _F.TYPE_STRING)])
    mon = monitoring.message_type.add(name="MonitoringConfig")
    mon.field.extend([_field("prometheus_config", 1, _F.TYPE_MESSAGE, ".tensorflow.serving.PrometheusConfig")])
    pool.Add(monitoring)

    return {
        name: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"tensorflow.serving.{name}"))
        for name in ("BatchingParameters", "MonitoringConfig")
    }


_MESSAGES = _build()
BatchingParameters: type = _MESSAGES["BatchingParameters"]
MonitoringConfig: type = _MESSAGES["MonitoringConfig"]
