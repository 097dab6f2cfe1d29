# SimpleBaseline ResNet-50, 256x192, heatmap MSE: mmpose's own config, unchanged but
# for the import that the ReLoss variant needs too (both runs of the pair load the same code).
_base_ = ('mmpose::body_2d_keypoint/topdown_heatmap/coco/'
          'td-hm_res50_8xb64-210e_coco-256x192.py')
custom_imports = dict(imports=['reloss.mmpose'], allow_failed_imports=False)
