include $(sort $(wildcard $(BR2_EXTERNAL_NTMOBILE_PATH)/package/*/*.mk))
