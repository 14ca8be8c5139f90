"""What is learned: the model family (family), its pieces (distributions, nets, likelihoods, priors, posteriors,
flows, hierarchy, vq) and the losses (objectives), each in a registry."""
