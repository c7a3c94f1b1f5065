; PSI JUNGFRAU 4M: 8 modules of 2 x 4 chips (256 x 256 pixels, 75 um), in CrystFEL's format.
; The data is the module stack stream-node receives from `udp://...?modules=8&grid=8x1`:
; frames of 4096 x 1024, module k in rows 512k..512k+511. In space the modules form 2 columns
; x 4 rows, module k in row k // 2, column k % 2, 8 pixels apart horizontally and 36
; vertically (as Jungfraujoch lays out a 4M); each chip is 258 pixels from the next, its
; double-size border pixels included. Assembled (the `assemble` kernel): 2164 x 2068 pixels.
; Each chip is a panel p<module>a<chip>; corner_x/corner_y: its first pixel's corner relative
; to the beam, in pixels. The same detector as jungfrau4m.toml.

clen = 0.120 m
photon_energy = 12400 eV
res = 13333.333333 ; pixels per metre (75 um)
adu_per_eV = 0.04 ; JUNGFRAU G0: about 40 ADU/keV (raw data only)
data = /entry/data/data
dim0 = %
dim1 = ss
dim2 = fs

rigid_group_p0 = p0a0,p0a1,p0a2,p0a3,p0a4,p0a5,p0a6,p0a7
rigid_group_p1 = p1a0,p1a1,p1a2,p1a3,p1a4,p1a5,p1a6,p1a7
rigid_group_p2 = p2a0,p2a1,p2a2,p2a3,p2a4,p2a5,p2a6,p2a7
rigid_group_p3 = p3a0,p3a1,p3a2,p3a3,p3a4,p3a5,p3a6,p3a7
rigid_group_p4 = p4a0,p4a1,p4a2,p4a3,p4a4,p4a5,p4a6,p4a7
rigid_group_p5 = p5a0,p5a1,p5a2,p5a3,p5a4,p5a5,p5a6,p5a7
rigid_group_p6 = p6a0,p6a1,p6a2,p6a3,p6a4,p6a5,p6a6,p6a7
rigid_group_p7 = p7a0,p7a1,p7a2,p7a3,p7a4,p7a5,p7a6,p7a7
rigid_group_collection_modules = p0,p1,p2,p3,p4,p5,p6,p7

p0a0/min_ss = 0
p0a0/max_ss = 255
p0a0/min_fs = 0
p0a0/max_fs = 255
p0a0/fs = -1.000000x +0.000000y
p0a0/ss = +0.000000x -1.000000y
p0a0/corner_x = 1034.5
p0a0/corner_y = 1082.5

p0a1/min_ss = 0
p0a1/max_ss = 255
p0a1/min_fs = 256
p0a1/max_fs = 511
p0a1/fs = -1.000000x +0.000000y
p0a1/ss = +0.000000x -1.000000y
p0a1/corner_x = 776.5
p0a1/corner_y = 1082.5

p0a2/min_ss = 0
p0a2/max_ss = 255
p0a2/min_fs = 512
p0a2/max_fs = 767
p0a2/fs = -1.000000x +0.000000y
p0a2/ss = +0.000000x -1.000000y
p0a2/corner_x = 518.5
p0a2/corner_y = 1082.5

p0a3/min_ss = 0
p0a3/max_ss = 255
p0a3/min_fs = 768
p0a3/max_fs = 1023
p0a3/fs = -1.000000x +0.000000y
p0a3/ss = +0.000000x -1.000000y
p0a3/corner_x = 260.5
p0a3/corner_y = 1082.5

p0a4/min_ss = 256
p0a4/max_ss = 511
p0a4/min_fs = 0
p0a4/max_fs = 255
p0a4/fs = -1.000000x +0.000000y
p0a4/ss = +0.000000x -1.000000y
p0a4/corner_x = 1034.5
p0a4/corner_y = 824.5

p0a5/min_ss = 256
p0a5/max_ss = 511
p0a5/min_fs = 256
p0a5/max_fs = 511
p0a5/fs = -1.000000x +0.000000y
p0a5/ss = +0.000000x -1.000000y
p0a5/corner_x = 776.5
p0a5/corner_y = 824.5

p0a6/min_ss = 256
p0a6/max_ss = 511
p0a6/min_fs = 512
p0a6/max_fs = 767
p0a6/fs = -1.000000x +0.000000y
p0a6/ss = +0.000000x -1.000000y
p0a6/corner_x = 518.5
p0a6/corner_y = 824.5

p0a7/min_ss = 256
p0a7/max_ss = 511
p0a7/min_fs = 768
p0a7/max_fs = 1023
p0a7/fs = -1.000000x +0.000000y
p0a7/ss = +0.000000x -1.000000y
p0a7/corner_x = 260.5
p0a7/corner_y = 824.5

p1a0/min_ss = 512
p1a0/max_ss = 767
p1a0/min_fs = 0
p1a0/max_fs = 255
p1a0/fs = -1.000000x +0.000000y
p1a0/ss = +0.000000x -1.000000y
p1a0/corner_x = -3.5
p1a0/corner_y = 1082.5

p1a1/min_ss = 512
p1a1/max_ss = 767
p1a1/min_fs = 256
p1a1/max_fs = 511
p1a1/fs = -1.000000x +0.000000y
p1a1/ss = +0.000000x -1.000000y
p1a1/corner_x = -261.5
p1a1/corner_y = 1082.5

p1a2/min_ss = 512
p1a2/max_ss = 767
p1a2/min_fs = 512
p1a2/max_fs = 767
p1a2/fs = -1.000000x +0.000000y
p1a2/ss = +0.000000x -1.000000y
p1a2/corner_x = -519.5
p1a2/corner_y = 1082.5

p1a3/min_ss = 512
p1a3/max_ss = 767
p1a3/min_fs = 768
p1a3/max_fs = 1023
p1a3/fs = -1.000000x +0.000000y
p1a3/ss = +0.000000x -1.000000y
p1a3/corner_x = -777.5
p1a3/corner_y = 1082.5

p1a4/min_ss = 768
p1a4/max_ss = 1023
p1a4/min_fs = 0
p1a4/max_fs = 255
p1a4/fs = -1.000000x +0.000000y
p1a4/ss = +0.000000x -1.000000y
p1a4/corner_x = -3.5
p1a4/corner_y = 824.5

p1a5/min_ss = 768
p1a5/max_ss = 1023
p1a5/min_fs = 256
p1a5/max_fs = 511
p1a5/fs = -1.000000x +0.000000y
p1a5/ss = +0.000000x -1.000000y
p1a5/corner_x = -261.5
p1a5/corner_y = 824.5

p1a6/min_ss = 768
p1a6/max_ss = 1023
p1a6/min_fs = 512
p1a6/max_fs = 767
p1a6/fs = -1.000000x +0.000000y
p1a6/ss = +0.000000x -1.000000y
p1a6/corner_x = -519.5
p1a6/corner_y = 824.5

p1a7/min_ss = 768
p1a7/max_ss = 1023
p1a7/min_fs = 768
p1a7/max_fs = 1023
p1a7/fs = -1.000000x +0.000000y
p1a7/ss = +0.000000x -1.000000y
p1a7/corner_x = -777.5
p1a7/corner_y = 824.5

p2a0/min_ss = 1024
p2a0/max_ss = 1279
p2a0/min_fs = 0
p2a0/max_fs = 255
p2a0/fs = -1.000000x +0.000000y
p2a0/ss = +0.000000x -1.000000y
p2a0/corner_x = 1034.5
p2a0/corner_y = 532.5

p2a1/min_ss = 1024
p2a1/max_ss = 1279
p2a1/min_fs = 256
p2a1/max_fs = 511
p2a1/fs = -1.000000x +0.000000y
p2a1/ss = +0.000000x -1.000000y
p2a1/corner_x = 776.5
p2a1/corner_y = 532.5

p2a2/min_ss = 1024
p2a2/max_ss = 1279
p2a2/min_fs = 512
p2a2/max_fs = 767
p2a2/fs = -1.000000x +0.000000y
p2a2/ss = +0.000000x -1.000000y
p2a2/corner_x = 518.5
p2a2/corner_y = 532.5

p2a3/min_ss = 1024
p2a3/max_ss = 1279
p2a3/min_fs = 768
p2a3/max_fs = 1023
p2a3/fs = -1.000000x +0.000000y
p2a3/ss = +0.000000x -1.000000y
p2a3/corner_x = 260.5
p2a3/corner_y = 532.5

p2a4/min_ss = 1280
p2a4/max_ss = 1535
p2a4/min_fs = 0
p2a4/max_fs = 255
p2a4/fs = -1.000000x +0.000000y
p2a4/ss = +0.000000x -1.000000y
p2a4/corner_x = 1034.5
p2a4/corner_y = 274.5

p2a5/min_ss = 1280
p2a5/max_ss = 1535
p2a5/min_fs = 256
p2a5/max_fs = 511
p2a5/fs = -1.000000x +0.000000y
p2a5/ss = +0.000000x -1.000000y
p2a5/corner_x = 776.5
p2a5/corner_y = 274.5

p2a6/min_ss = 1280
p2a6/max_ss = 1535
p2a6/min_fs = 512
p2a6/max_fs = 767
p2a6/fs = -1.000000x +0.000000y
p2a6/ss = +0.000000x -1.000000y
p2a6/corner_x = 518.5
p2a6/corner_y = 274.5

p2a7/min_ss = 1280
p2a7/max_ss = 1535
p2a7/min_fs = 768
p2a7/max_fs = 1023
p2a7/fs = -1.000000x +0.000000y
p2a7/ss = +0.000000x -1.000000y
p2a7/corner_x = 260.5
p2a7/corner_y = 274.5

p3a0/min_ss = 1536
p3a0/max_ss = 1791
p3a0/min_fs = 0
p3a0/max_fs = 255
p3a0/fs = -1.000000x +0.000000y
p3a0/ss = +0.000000x -1.000000y
p3a0/corner_x = -3.5
p3a0/corner_y = 532.5

p3a1/min_ss = 1536
p3a1/max_ss = 1791
p3a1/min_fs = 256
p3a1/max_fs = 511
p3a1/fs = -1.000000x +0.000000y
p3a1/ss = +0.000000x -1.000000y
p3a1/corner_x = -261.5
p3a1/corner_y = 532.5

p3a2/min_ss = 1536
p3a2/max_ss = 1791
p3a2/min_fs = 512
p3a2/max_fs = 767
p3a2/fs = -1.000000x +0.000000y
p3a2/ss = +0.000000x -1.000000y
p3a2/corner_x = -519.5
p3a2/corner_y = 532.5

p3a3/min_ss = 1536
p3a3/max_ss = 1791
p3a3/min_fs = 768
p3a3/max_fs = 1023
p3a3/fs = -1.000000x +0.000000y
p3a3/ss = +0.000000x -1.000000y
p3a3/corner_x = -777.5
p3a3/corner_y = 532.5

p3a4/min_ss = 1792
p3a4/max_ss = 2047
p3a4/min_fs = 0
p3a4/max_fs = 255
p3a4/fs = -1.000000x +0.000000y
p3a4/ss = +0.000000x -1.000000y
p3a4/corner_x = -3.5
p3a4/corner_y = 274.5

p3a5/min_ss = 1792
p3a5/max_ss = 2047
p3a5/min_fs = 256
p3a5/max_fs = 511
p3a5/fs = -1.000000x +0.000000y
p3a5/ss = +0.000000x -1.000000y
p3a5/corner_x = -261.5
p3a5/corner_y = 274.5

p3a6/min_ss = 1792
p3a6/max_ss = 2047
p3a6/min_fs = 512
p3a6/max_fs = 767
p3a6/fs = -1.000000x +0.000000y
p3a6/ss = +0.000000x -1.000000y
p3a6/corner_x = -519.5
p3a6/corner_y = 274.5

p3a7/min_ss = 1792
p3a7/max_ss = 2047
p3a7/min_fs = 768
p3a7/max_fs = 1023
p3a7/fs = -1.000000x +0.000000y
p3a7/ss = +0.000000x -1.000000y
p3a7/corner_x = -777.5
p3a7/corner_y = 274.5

p4a0/min_ss = 2048
p4a0/max_ss = 2303
p4a0/min_fs = 0
p4a0/max_fs = 255
p4a0/fs = -1.000000x +0.000000y
p4a0/ss = +0.000000x -1.000000y
p4a0/corner_x = 1034.5
p4a0/corner_y = -17.5

p4a1/min_ss = 2048
p4a1/max_ss = 2303
p4a1/min_fs = 256
p4a1/max_fs = 511
p4a1/fs = -1.000000x +0.000000y
p4a1/ss = +0.000000x -1.000000y
p4a1/corner_x = 776.5
p4a1/corner_y = -17.5

p4a2/min_ss = 2048
p4a2/max_ss = 2303
p4a2/min_fs = 512
p4a2/max_fs = 767
p4a2/fs = -1.000000x +0.000000y
p4a2/ss = +0.000000x -1.000000y
p4a2/corner_x = 518.5
p4a2/corner_y = -17.5

p4a3/min_ss = 2048
p4a3/max_ss = 2303
p4a3/min_fs = 768
p4a3/max_fs = 1023
p4a3/fs = -1.000000x +0.000000y
p4a3/ss = +0.000000x -1.000000y
p4a3/corner_x = 260.5
p4a3/corner_y = -17.5

p4a4/min_ss = 2304
p4a4/max_ss = 2559
p4a4/min_fs = 0
p4a4/max_fs = 255
p4a4/fs = -1.000000x +0.000000y
p4a4/ss = +0.000000x -1.000000y
p4a4/corner_x = 1034.5
p4a4/corner_y = -275.5

p4a5/min_ss = 2304
p4a5/max_ss = 2559
p4a5/min_fs = 256
p4a5/max_fs = 511
p4a5/fs = -1.000000x +0.000000y
p4a5/ss = +0.000000x -1.000000y
p4a5/corner_x = 776.5
p4a5/corner_y = -275.5

p4a6/min_ss = 2304
p4a6/max_ss = 2559
p4a6/min_fs = 512
p4a6/max_fs = 767
p4a6/fs = -1.000000x +0.000000y
p4a6/ss = +0.000000x -1.000000y
p4a6/corner_x = 518.5
p4a6/corner_y = -275.5

p4a7/min_ss = 2304
p4a7/max_ss = 2559
p4a7/min_fs = 768
p4a7/max_fs = 1023
p4a7/fs = -1.000000x +0.000000y
p4a7/ss = +0.000000x -1.000000y
p4a7/corner_x = 260.5
p4a7/corner_y = -275.5

p5a0/min_ss = 2560
p5a0/max_ss = 2815
p5a0/min_fs = 0
p5a0/max_fs = 255
p5a0/fs = -1.000000x +0.000000y
p5a0/ss = +0.000000x -1.000000y
p5a0/corner_x = -3.5
p5a0/corner_y = -17.5

p5a1/min_ss = 2560
p5a1/max_ss = 2815
p5a1/min_fs = 256
p5a1/max_fs = 511
p5a1/fs = -1.000000x +0.000000y
p5a1/ss = +0.000000x -1.000000y
p5a1/corner_x = -261.5
p5a1/corner_y = -17.5

p5a2/min_ss = 2560
p5a2/max_ss = 2815
p5a2/min_fs = 512
p5a2/max_fs = 767
p5a2/fs = -1.000000x +0.000000y
p5a2/ss = +0.000000x -1.000000y
p5a2/corner_x = -519.5
p5a2/corner_y = -17.5

p5a3/min_ss = 2560
p5a3/max_ss = 2815
p5a3/min_fs = 768
p5a3/max_fs = 1023
p5a3/fs = -1.000000x +0.000000y
p5a3/ss = +0.000000x -1.000000y
p5a3/corner_x = -777.5
p5a3/corner_y = -17.5

p5a4/min_ss = 2816
p5a4/max_ss = 3071
p5a4/min_fs = 0
p5a4/max_fs = 255
p5a4/fs = -1.000000x +0.000000y
p5a4/ss = +0.000000x -1.000000y
p5a4/corner_x = -3.5
p5a4/corner_y = -275.5

p5a5/min_ss = 2816
p5a5/max_ss = 3071
p5a5/min_fs = 256
p5a5/max_fs = 511
p5a5/fs = -1.000000x +0.000000y
p5a5/ss = +0.000000x -1.000000y
p5a5/corner_x = -261.5
p5a5/corner_y = -275.5

p5a6/min_ss = 2816
p5a6/max_ss = 3071
p5a6/min_fs = 512
p5a6/max_fs = 767
p5a6/fs = -1.000000x +0.000000y
p5a6/ss = +0.000000x -1.000000y
p5a6/corner_x = -519.5
p5a6/corner_y = -275.5

p5a7/min_ss = 2816
p5a7/max_ss = 3071
p5a7/min_fs = 768
p5a7/max_fs = 1023
p5a7/fs = -1.000000x +0.000000y
p5a7/ss = +0.000000x -1.000000y
p5a7/corner_x = -777.5
p5a7/corner_y = -275.5

p6a0/min_ss = 3072
p6a0/max_ss = 3327
p6a0/min_fs = 0
p6a0/max_fs = 255
p6a0/fs = -1.000000x +0.000000y
p6a0/ss = +0.000000x -1.000000y
p6a0/corner_x = 1034.5
p6a0/corner_y = -567.5

p6a1/min_ss = 3072
p6a1/max_ss = 3327
p6a1/min_fs = 256
p6a1/max_fs = 511
p6a1/fs = -1.000000x +0.000000y
p6a1/ss = +0.000000x -1.000000y
p6a1/corner_x = 776.5
p6a1/corner_y = -567.5

p6a2/min_ss = 3072
p6a2/max_ss = 3327
p6a2/min_fs = 512
p6a2/max_fs = 767
p6a2/fs = -1.000000x +0.000000y
p6a2/ss = +0.000000x -1.000000y
p6a2/corner_x = 518.5
p6a2/corner_y = -567.5

p6a3/min_ss = 3072
p6a3/max_ss = 3327
p6a3/min_fs = 768
p6a3/max_fs = 1023
p6a3/fs = -1.000000x +0.000000y
p6a3/ss = +0.000000x -1.000000y
p6a3/corner_x = 260.5
p6a3/corner_y = -567.5

p6a4/min_ss = 3328
p6a4/max_ss = 3583
p6a4/min_fs = 0
p6a4/max_fs = 255
p6a4/fs = -1.000000x +0.000000y
p6a4/ss = +0.000000x -1.000000y
p6a4/corner_x = 1034.5
p6a4/corner_y = -825.5

p6a5/min_ss = 3328
p6a5/max_ss = 3583
p6a5/min_fs = 256
p6a5/max_fs = 511
p6a5/fs = -1.000000x +0.000000y
p6a5/ss = +0.000000x -1.000000y
p6a5/corner_x = 776.5
p6a5/corner_y = -825.5

p6a6/min_ss = 3328
p6a6/max_ss = 3583
p6a6/min_fs = 512
p6a6/max_fs = 767
p6a6/fs = -1.000000x +0.000000y
p6a6/ss = +0.000000x -1.000000y
p6a6/corner_x = 518.5
p6a6/corner_y = -825.5

p6a7/min_ss = 3328
p6a7/max_ss = 3583
p6a7/min_fs = 768
p6a7/max_fs = 1023
p6a7/fs = -1.000000x +0.000000y
p6a7/ss = +0.000000x -1.000000y
p6a7/corner_x = 260.5
p6a7/corner_y = -825.5

p7a0/min_ss = 3584
p7a0/max_ss = 3839
p7a0/min_fs = 0
p7a0/max_fs = 255
p7a0/fs = -1.000000x +0.000000y
p7a0/ss = +0.000000x -1.000000y
p7a0/corner_x = -3.5
p7a0/corner_y = -567.5

p7a1/min_ss = 3584
p7a1/max_ss = 3839
p7a1/min_fs = 256
p7a1/max_fs = 511
p7a1/fs = -1.000000x +0.000000y
p7a1/ss = +0.000000x -1.000000y
p7a1/corner_x = -261.5
p7a1/corner_y = -567.5

p7a2/min_ss = 3584
p7a2/max_ss = 3839
p7a2/min_fs = 512
p7a2/max_fs = 767
p7a2/fs = -1.000000x +0.000000y
p7a2/ss = +0.000000x -1.000000y
p7a2/corner_x = -519.5
p7a2/corner_y = -567.5

p7a3/min_ss = 3584
p7a3/max_ss = 3839
p7a3/min_fs = 768
p7a3/max_fs = 1023
p7a3/fs = -1.000000x +0.000000y
p7a3/ss = +0.000000x -1.000000y
p7a3/corner_x = -777.5
p7a3/corner_y = -567.5

p7a4/min_ss = 3840
p7a4/max_ss = 4095
p7a4/min_fs = 0
p7a4/max_fs = 255
p7a4/fs = -1.000000x +0.000000y
p7a4/ss = +0.000000x -1.000000y
p7a4/corner_x = -3.5
p7a4/corner_y = -825.5

p7a5/min_ss = 3840
p7a5/max_ss = 4095
p7a5/min_fs = 256
p7a5/max_fs = 511
p7a5/fs = -1.000000x +0.000000y
p7a5/ss = +0.000000x -1.000000y
p7a5/corner_x = -261.5
p7a5/corner_y = -825.5

p7a6/min_ss = 3840
p7a6/max_ss = 4095
p7a6/min_fs = 512
p7a6/max_fs = 767
p7a6/fs = -1.000000x +0.000000y
p7a6/ss = +0.000000x -1.000000y
p7a6/corner_x = -519.5
p7a6/corner_y = -825.5

p7a7/min_ss = 3840
p7a7/max_ss = 4095
p7a7/min_fs = 768
p7a7/max_fs = 1023
p7a7/fs = -1.000000x +0.000000y
p7a7/ss = +0.000000x -1.000000y
p7a7/corner_x = -777.5
p7a7/corner_y = -825.5
