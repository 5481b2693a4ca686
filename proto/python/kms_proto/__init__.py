"""Generated gRPC and protobuf code for the KMS API (proto/), made by scripts/gen_proto.py.

Never edit the modules below this package by hand; change the .proto files and regenerate.

    from kms_proto.kms.v1 import kms_pb2, kms_pb2_grpc
"""
