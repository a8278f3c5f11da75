"""Pure nn.Module architectures: constructor keywords are the reference configs' keys and state-dict
keys/shapes equal the reference's, so published checkpoints load strictly."""
