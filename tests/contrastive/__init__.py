"""Tests of contrastive/: sampling, triplets, losses and HSAP training."""
