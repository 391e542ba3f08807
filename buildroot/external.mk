# Both packages build from the same commit of the ntmobile repository.
# To move to another commit, change NTMOBILE_VERSION and the tarball
# hashes in package/*/*.hash (see README.md, "Moving to a new commit").
NTMOBILE_VERSION = 98bee2249e9389d965ccc9ea6c7055ddd16490c1
NTMOBILE_SITE = $(call qstrip,$(BR2_NTMOBILE_SITE))

include $(sort $(wildcard $(BR2_EXTERNAL_NTMOBILE_PATH)/package/*/*.mk))
