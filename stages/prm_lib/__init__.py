"""The PRM stage's library: step labels, the token-classification model, training, metrics, scoring."""
