# DARK HRNet-W48, 384x288, with ReLossPose (the shipped 'pose' surrogate)
# in place of the heatmap MSE.
_base_ = './td-hm_hrnet-w48_dark-8xb32-210e_coco-384x288.py'
model = dict(head=dict(loss=dict(_delete_=True, type='ReLossPose', use_target_weight=True)))
