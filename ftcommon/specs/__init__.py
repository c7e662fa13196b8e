"""One typed spec per job kind (PrepareSpec, TrainSpec, EvalSpec): defaults and checks in one place, converted
to and from the proto request by proto_bridge. Every client builds its request through these, and every
service reads requests and stored jobs through them."""
