/* Vulkan entry points loaded at run time from libvulkan.so.1 (dlopen), so a machine without the loader gets a
 * clear error naming the package instead of a dynamic-linker failure. Code calls vkFoo() as usual: each name is
 * a macro for a function pointer lt_vkFoo filled by vkfn_load(). */
#ifndef LATHE_VKFN_H
#define LATHE_VKFN_H

#define VK_NO_PROTOTYPES
#include <vulkan/vulkan.h>

#include "common/status.h"

/* clang-format off */
/* Entry points resolved without an instance. */
#define VKFN_GLOBAL(X) X(vkCreateInstance) X(vkEnumerateInstanceVersion) X(vkEnumerateInstanceLayerProperties)

/* Entry points resolved through an instance (instance- and device-level; the loader's trampolines dispatch on
 * the handle, so one set serves every instance and device). */
#define VKFN_INSTANCE(X)                                                                                        \
  X(vkDestroyInstance) X(vkEnumeratePhysicalDevices) X(vkGetPhysicalDeviceProperties)                          \
  X(vkGetPhysicalDeviceProperties2) X(vkGetPhysicalDeviceFeatures2) X(vkGetPhysicalDeviceMemoryProperties)     \
  X(vkGetPhysicalDeviceQueueFamilyProperties) X(vkEnumerateDeviceExtensionProperties) X(vkCreateDevice)        \
  X(vkDestroyDevice) X(vkGetDeviceQueue) X(vkDeviceWaitIdle) X(vkCreateCommandPool) X(vkDestroyCommandPool)    \
  X(vkAllocateCommandBuffers) X(vkFreeCommandBuffers) X(vkBeginCommandBuffer) X(vkEndCommandBuffer)            \
  X(vkQueueSubmit) X(vkCreateFence) X(vkDestroyFence) X(vkWaitForFences) X(vkAllocateMemory) X(vkFreeMemory)   \
  X(vkMapMemory) X(vkCreateBuffer) X(vkDestroyBuffer) X(vkGetBufferMemoryRequirements) X(vkBindBufferMemory)   \
  X(vkCreateShaderModule) X(vkDestroyShaderModule) X(vkCreateDescriptorSetLayout)                              \
  X(vkDestroyDescriptorSetLayout) X(vkCreatePipelineLayout) X(vkDestroyPipelineLayout)                         \
  X(vkCreateComputePipelines) X(vkDestroyPipeline) X(vkCreatePipelineCache) X(vkDestroyPipelineCache)          \
  X(vkGetPipelineCacheData) X(vkCreateDescriptorPool) X(vkDestroyDescriptorPool) X(vkAllocateDescriptorSets)   \
  X(vkUpdateDescriptorSets) X(vkCmdBindPipeline) X(vkCmdBindDescriptorSets) X(vkCmdPushConstants)              \
  X(vkCmdDispatch) X(vkCmdPipelineBarrier) X(vkCmdCopyBuffer) X(vkCmdFillBuffer)                           \
  X(vkGetPhysicalDeviceFormatProperties) X(vkCreateBufferView) X(vkDestroyBufferView)
/* clang-format on */

#define VKFN_DECLARE(name) extern PFN_##name lt_##name;
VKFN_DECLARE(vkGetInstanceProcAddr)
VKFN_GLOBAL(VKFN_DECLARE)
VKFN_INSTANCE(VKFN_DECLARE)
#undef VKFN_DECLARE

#define vkGetInstanceProcAddr lt_vkGetInstanceProcAddr
#define vkCreateInstance lt_vkCreateInstance
#define vkEnumerateInstanceVersion lt_vkEnumerateInstanceVersion
#define vkEnumerateInstanceLayerProperties lt_vkEnumerateInstanceLayerProperties
#define vkDestroyInstance lt_vkDestroyInstance
#define vkEnumeratePhysicalDevices lt_vkEnumeratePhysicalDevices
#define vkGetPhysicalDeviceProperties lt_vkGetPhysicalDeviceProperties
#define vkGetPhysicalDeviceProperties2 lt_vkGetPhysicalDeviceProperties2
#define vkGetPhysicalDeviceFeatures2 lt_vkGetPhysicalDeviceFeatures2
#define vkGetPhysicalDeviceMemoryProperties lt_vkGetPhysicalDeviceMemoryProperties
#define vkGetPhysicalDeviceQueueFamilyProperties lt_vkGetPhysicalDeviceQueueFamilyProperties
#define vkEnumerateDeviceExtensionProperties lt_vkEnumerateDeviceExtensionProperties
#define vkCreateDevice lt_vkCreateDevice
#define vkDestroyDevice lt_vkDestroyDevice
#define vkGetDeviceQueue lt_vkGetDeviceQueue
#define vkDeviceWaitIdle lt_vkDeviceWaitIdle
#define vkCreateCommandPool lt_vkCreateCommandPool
#define vkDestroyCommandPool lt_vkDestroyCommandPool
#define vkAllocateCommandBuffers lt_vkAllocateCommandBuffers
#define vkFreeCommandBuffers lt_vkFreeCommandBuffers
#define vkBeginCommandBuffer lt_vkBeginCommandBuffer
#define vkEndCommandBuffer lt_vkEndCommandBuffer
#define vkQueueSubmit lt_vkQueueSubmit
#define vkCreateFence lt_vkCreateFence
#define vkDestroyFence lt_vkDestroyFence
#define vkWaitForFences lt_vkWaitForFences
#define vkAllocateMemory lt_vkAllocateMemory
#define vkFreeMemory lt_vkFreeMemory
#define vkMapMemory lt_vkMapMemory
#define vkCreateBuffer lt_vkCreateBuffer
#define vkDestroyBuffer lt_vkDestroyBuffer
#define vkGetBufferMemoryRequirements lt_vkGetBufferMemoryRequirements
#define vkBindBufferMemory lt_vkBindBufferMemory
#define vkCreateShaderModule lt_vkCreateShaderModule
#define vkDestroyShaderModule lt_vkDestroyShaderModule
#define vkCreateDescriptorSetLayout lt_vkCreateDescriptorSetLayout
#define vkDestroyDescriptorSetLayout lt_vkDestroyDescriptorSetLayout
#define vkCreatePipelineLayout lt_vkCreatePipelineLayout
#define vkDestroyPipelineLayout lt_vkDestroyPipelineLayout
#define vkCreateComputePipelines lt_vkCreateComputePipelines
#define vkDestroyPipeline lt_vkDestroyPipeline
#define vkCreatePipelineCache lt_vkCreatePipelineCache
#define vkDestroyPipelineCache lt_vkDestroyPipelineCache
#define vkGetPipelineCacheData lt_vkGetPipelineCacheData
#define vkCreateDescriptorPool lt_vkCreateDescriptorPool
#define vkDestroyDescriptorPool lt_vkDestroyDescriptorPool
#define vkAllocateDescriptorSets lt_vkAllocateDescriptorSets
#define vkUpdateDescriptorSets lt_vkUpdateDescriptorSets
#define vkCmdBindPipeline lt_vkCmdBindPipeline
#define vkCmdBindDescriptorSets lt_vkCmdBindDescriptorSets
#define vkCmdPushConstants lt_vkCmdPushConstants
#define vkCmdDispatch lt_vkCmdDispatch
#define vkCmdPipelineBarrier lt_vkCmdPipelineBarrier
#define vkCmdCopyBuffer lt_vkCmdCopyBuffer
#define vkCmdFillBuffer lt_vkCmdFillBuffer
#define vkGetPhysicalDeviceFormatProperties lt_vkGetPhysicalDeviceFormatProperties
#define vkCreateBufferView lt_vkCreateBufferView
#define vkDestroyBufferView lt_vkDestroyBufferView

/* Loads libvulkan.so.1 and the global entry points (once per process; thread-safe). Returns LT_E_NO_VULKAN with a
 * message naming the package to install when the loader is missing. */
lt_status_t vkfn_load(lt_err_t *err);

/* Resolves the instance-level entry points through inst (once per process; later calls do nothing). */
lt_status_t vkfn_load_instance(VkInstance inst, lt_err_t *err);

#endif
