"""The run core: one training run, from the one Ray Train ``TorchTrainer`` (:mod:`.launcher`) through the per-worker
function (:mod:`.worker`) and the epoch driver (:mod:`.epochs`) down to a batch step (:class:`.learner.Learner`);
a model trained alone with CE, such as the default teacher (:mod:`.alone`); and what a run needs, checked before
anything starts (:mod:`.preflight`)."""
