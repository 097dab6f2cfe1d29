# SimpleBaseline ResNet-50, 256x192, with ReLossPose (the shipped 'pose' surrogate)
# in place of the heatmap MSE.
_base_ = './td-hm_res50_8xb64-210e_coco-256x192.py'
model = dict(head=dict(loss=dict(_delete_=True, type='ReLossPose', use_target_weight=True)))
