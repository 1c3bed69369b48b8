"""Training loops: online SAC pretraining, offline CQL, offline-to-online fine-tuning."""
