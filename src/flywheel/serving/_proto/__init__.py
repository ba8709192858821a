"""Generated Open Inference Protocol v2 gRPC code (``inference.GRPCInferenceService``).

Source: ``proto/grpc_predict_v2.proto``; regenerate with ``scripts/gen_proto.sh``. The
messages live in a private descriptor pool (``grpc_predict_v2_pb2._POOL``) so that this module
and other copies of the standard ``inference`` package (tritonclient's) can be imported in
one process; the wire format is the standard one.
"""
