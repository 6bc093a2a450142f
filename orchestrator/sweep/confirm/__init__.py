"""The sweep's confirmation: the best configs re-trained on fresh seeds, the verdict with paired intervals, the
confirmed accuracy-vs-cost front."""
