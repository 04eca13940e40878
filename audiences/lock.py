"""The key of the one-build-at-a-time lock, in Redis (shared by replicas). Builds hold it, and so
do erasures (`crumb.privacy.ErasureWorker`): an erasure between two reads of one build would leave
the build with half an ID, or see its rows put back by the build's swap."""

BUILD_LOCK_KEY = "crumb:{audiences}:build-lock"
