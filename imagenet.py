"""ImageNet as users have it (docs/method.md sections 4 and 5): the layouts and label files of the validation set, the
1,000-class index, the views the scripts decode from each image, and the resumable pass over them (resumable_pass).

Layouts (`imagenet_folder` detects which, and says so):
- the prepared layout: root/<wnid>/<image>, one sub-folder per class (ImageFolder-style; any subset of classes);
- torchvision's `datasets.ImageNet` root: root/val/<wnid>/<image> next to root/meta.bin;
- the flat folder `ILSVRC2012_img_val.tar` unpacks to (root/ILSVRC2012_val_XXXXXXXX.JPEG), labelled by a file
  passed with --labels, in any of these forms:
  - the devkit's ILSVRC2012_validation_ground_truth.txt: one 1-based ILSVRC id per line, line i for image
    ILSVRC2012_val_{i:08d}; the ids map to wnids through map_clsloc.txt or meta.mat (pass it after a comma, or
    leave it next to the ground-truth file), else through ILSVRC_IDS below (the devkit's order);
  - a two-column text file `<file name> <class index 0..999>` in torchvision's class order (the common val.txt);
  - Kaggle's LOC_val_solution.csv (ImageId,PredictionString; the first token of each prediction is the wnid).

Every image is labelled by its wnid's position in WNIDS (torchvision's class index), so a folder holding only some
classes is labelled right. Images are sorted by file name (then path) in every layout, so --limit picks the same
images whichever layout holds them.
"""

import csv
import os
import re
import time

import numpy as np
import torch
from tqdm import tqdm

from cli import die
from results import atomic_write, release_inherited_locks

MEAN = (0.485, 0.456, 0.406)  # ImageNet normalisation, docs/method.md section 1
STD = (0.229, 0.224, 0.225)

# ----------------------------------------------------------------------------------------------------
# The 1,000 classes.

WNIDS = (  # the 1,000 ImageNet-1k wnids; position = canonical class index 0..999 (torchvision's order)
    "n01440764 n01443537 n01484850 n01491361 n01494475 n01496331 n01498041 n01514668 n01514859 n01518878 n01530575 "
    "n01531178 n01532829 n01534433 n01537544 n01558993 n01560419 n01580077 n01582220 n01592084 n01601694 n01608432 "
    "n01614925 n01616318 n01622779 n01629819 n01630670 n01631663 n01632458 n01632777 n01641577 n01644373 n01644900 "
    "n01664065 n01665541 n01667114 n01667778 n01669191 n01675722 n01677366 n01682714 n01685808 n01687978 n01688243 "
    "n01689811 n01692333 n01693334 n01694178 n01695060 n01697457 n01698640 n01704323 n01728572 n01728920 n01729322 "
    "n01729977 n01734418 n01735189 n01737021 n01739381 n01740131 n01742172 n01744401 n01748264 n01749939 n01751748 "
    "n01753488 n01755581 n01756291 n01768244 n01770081 n01770393 n01773157 n01773549 n01773797 n01774384 n01774750 "
    "n01775062 n01776313 n01784675 n01795545 n01796340 n01797886 n01798484 n01806143 n01806567 n01807496 n01817953 "
    "n01818515 n01819313 n01820546 n01824575 n01828970 n01829413 n01833805 n01843065 n01843383 n01847000 n01855032 "
    "n01855672 n01860187 n01871265 n01872401 n01873310 n01877812 n01882714 n01883070 n01910747 n01914609 n01917289 "
    "n01924916 n01930112 n01943899 n01944390 n01945685 n01950731 n01955084 n01968897 n01978287 n01978455 n01980166 "
    "n01981276 n01983481 n01984695 n01985128 n01986214 n01990800 n02002556 n02002724 n02006656 n02007558 n02009229 "
    "n02009912 n02011460 n02012849 n02013706 n02017213 n02018207 n02018795 n02025239 n02027492 n02028035 n02033041 "
    "n02037110 n02051845 n02056570 n02058221 n02066245 n02071294 n02074367 n02077923 n02085620 n02085782 n02085936 "
    "n02086079 n02086240 n02086646 n02086910 n02087046 n02087394 n02088094 n02088238 n02088364 n02088466 n02088632 "
    "n02089078 n02089867 n02089973 n02090379 n02090622 n02090721 n02091032 n02091134 n02091244 n02091467 n02091635 "
    "n02091831 n02092002 n02092339 n02093256 n02093428 n02093647 n02093754 n02093859 n02093991 n02094114 n02094258 "
    "n02094433 n02095314 n02095570 n02095889 n02096051 n02096177 n02096294 n02096437 n02096585 n02097047 n02097130 "
    "n02097209 n02097298 n02097474 n02097658 n02098105 n02098286 n02098413 n02099267 n02099429 n02099601 n02099712 "
    "n02099849 n02100236 n02100583 n02100735 n02100877 n02101006 n02101388 n02101556 n02102040 n02102177 n02102318 "
    "n02102480 n02102973 n02104029 n02104365 n02105056 n02105162 n02105251 n02105412 n02105505 n02105641 n02105855 "
    "n02106030 n02106166 n02106382 n02106550 n02106662 n02107142 n02107312 n02107574 n02107683 n02107908 n02108000 "
    "n02108089 n02108422 n02108551 n02108915 n02109047 n02109525 n02109961 n02110063 n02110185 n02110341 n02110627 "
    "n02110806 n02110958 n02111129 n02111277 n02111500 n02111889 n02112018 n02112137 n02112350 n02112706 n02113023 "
    "n02113186 n02113624 n02113712 n02113799 n02113978 n02114367 n02114548 n02114712 n02114855 n02115641 n02115913 "
    "n02116738 n02117135 n02119022 n02119789 n02120079 n02120505 n02123045 n02123159 n02123394 n02123597 n02124075 "
    "n02125311 n02127052 n02128385 n02128757 n02128925 n02129165 n02129604 n02130308 n02132136 n02133161 n02134084 "
    "n02134418 n02137549 n02138441 n02165105 n02165456 n02167151 n02168699 n02169497 n02172182 n02174001 n02177972 "
    "n02190166 n02206856 n02219486 n02226429 n02229544 n02231487 n02233338 n02236044 n02256656 n02259212 n02264363 "
    "n02268443 n02268853 n02276258 n02277742 n02279972 n02280649 n02281406 n02281787 n02317335 n02319095 n02321529 "
    "n02325366 n02326432 n02328150 n02342885 n02346627 n02356798 n02361337 n02363005 n02364673 n02389026 n02391049 "
    "n02395406 n02396427 n02397096 n02398521 n02403003 n02408429 n02410509 n02412080 n02415577 n02417914 n02422106 "
    "n02422699 n02423022 n02437312 n02437616 n02441942 n02442845 n02443114 n02443484 n02444819 n02445715 n02447366 "
    "n02454379 n02457408 n02480495 n02480855 n02481823 n02483362 n02483708 n02484975 n02486261 n02486410 n02487347 "
    "n02488291 n02488702 n02489166 n02490219 n02492035 n02492660 n02493509 n02493793 n02494079 n02497673 n02500267 "
    "n02504013 n02504458 n02509815 n02510455 n02514041 n02526121 n02536864 n02606052 n02607072 n02640242 n02641379 "
    "n02643566 n02655020 n02666196 n02667093 n02669723 n02672831 n02676566 n02687172 n02690373 n02692877 n02699494 "
    "n02701002 n02704792 n02708093 n02727426 n02730930 n02747177 n02749479 n02769748 n02776631 n02777292 n02782093 "
    "n02783161 n02786058 n02787622 n02788148 n02790996 n02791124 n02791270 n02793495 n02794156 n02795169 n02797295 "
    "n02799071 n02802426 n02804414 n02804610 n02807133 n02808304 n02808440 n02814533 n02814860 n02815834 n02817516 "
    "n02823428 n02823750 n02825657 n02834397 n02835271 n02837789 n02840245 n02841315 n02843684 n02859443 n02860847 "
    "n02865351 n02869837 n02870880 n02871525 n02877765 n02879718 n02883205 n02892201 n02892767 n02894605 n02895154 "
    "n02906734 n02909870 n02910353 n02916936 n02917067 n02927161 n02930766 n02939185 n02948072 n02950826 n02951358 "
    "n02951585 n02963159 n02965783 n02966193 n02966687 n02971356 n02974003 n02977058 n02978881 n02979186 n02980441 "
    "n02981792 n02988304 n02992211 n02992529 n02999410 n03000134 n03000247 n03000684 n03014705 n03016953 n03017168 "
    "n03018349 n03026506 n03028079 n03032252 n03041632 n03042490 n03045698 n03047690 n03062245 n03063599 n03063689 "
    "n03065424 n03075370 n03085013 n03089624 n03095699 n03100240 n03109150 n03110669 n03124043 n03124170 n03125729 "
    "n03126707 n03127747 n03127925 n03131574 n03133878 n03134739 n03141823 n03146219 n03160309 n03179701 n03180011 "
    "n03187595 n03188531 n03196217 n03197337 n03201208 n03207743 n03207941 n03208938 n03216828 n03218198 n03220513 "
    "n03223299 n03240683 n03249569 n03250847 n03255030 n03259280 n03271574 n03272010 n03272562 n03290653 n03291819 "
    "n03297495 n03314780 n03325584 n03337140 n03344393 n03345487 n03347037 n03355925 n03372029 n03376595 n03379051 "
    "n03384352 n03388043 n03388183 n03388549 n03393912 n03394916 n03400231 n03404251 n03417042 n03424325 n03425413 "
    "n03443371 n03444034 n03445777 n03445924 n03447447 n03447721 n03450230 n03452741 n03457902 n03459775 n03461385 "
    "n03467068 n03476684 n03476991 n03478589 n03481172 n03482405 n03483316 n03485407 n03485794 n03492542 n03494278 "
    "n03495258 n03496892 n03498962 n03527444 n03529860 n03530642 n03532672 n03534580 n03535780 n03538406 n03544143 "
    "n03584254 n03584829 n03590841 n03594734 n03594945 n03595614 n03598930 n03599486 n03602883 n03617480 n03623198 "
    "n03627232 n03630383 n03633091 n03637318 n03642806 n03649909 n03657121 n03658185 n03661043 n03662601 n03666591 "
    "n03670208 n03673027 n03676483 n03680355 n03690938 n03691459 n03692522 n03697007 n03706229 n03709823 n03710193 "
    "n03710637 n03710721 n03717622 n03720891 n03721384 n03724870 n03729826 n03733131 n03733281 n03733805 n03742115 "
    "n03743016 n03759954 n03761084 n03763968 n03764736 n03769881 n03770439 n03770679 n03773504 n03775071 n03775546 "
    "n03776460 n03777568 n03777754 n03781244 n03782006 n03785016 n03786901 n03787032 n03788195 n03788365 n03791053 "
    "n03792782 n03792972 n03793489 n03794056 n03796401 n03803284 n03804744 n03814639 n03814906 n03825788 n03832673 "
    "n03837869 n03838899 n03840681 n03841143 n03843555 n03854065 n03857828 n03866082 n03868242 n03868863 n03871628 "
    "n03873416 n03874293 n03874599 n03876231 n03877472 n03877845 n03884397 n03887697 n03888257 n03888605 n03891251 "
    "n03891332 n03895866 n03899768 n03902125 n03903868 n03908618 n03908714 n03916031 n03920288 n03924679 n03929660 "
    "n03929855 n03930313 n03930630 n03933933 n03935335 n03937543 n03938244 n03942813 n03944341 n03947888 n03950228 "
    "n03954731 n03956157 n03958227 n03961711 n03967562 n03970156 n03976467 n03976657 n03977966 n03980874 n03982430 "
    "n03983396 n03991062 n03992509 n03995372 n03998194 n04004767 n04005630 n04008634 n04009552 n04019541 n04023962 "
    "n04026417 n04033901 n04033995 n04037443 n04039381 n04040759 n04041544 n04044716 n04049303 n04065272 n04067472 "
    "n04069434 n04070727 n04074963 n04081281 n04086273 n04090263 n04099969 n04111531 n04116512 n04118538 n04118776 "
    "n04120489 n04125021 n04127249 n04131690 n04133789 n04136333 n04141076 n04141327 n04141975 n04146614 n04147183 "
    "n04149813 n04152593 n04153751 n04154565 n04162706 n04179913 n04192698 n04200800 n04201297 n04204238 n04204347 "
    "n04208210 n04209133 n04209239 n04228054 n04229816 n04235860 n04238763 n04239074 n04243546 n04251144 n04252077 "
    "n04252225 n04254120 n04254680 n04254777 n04258138 n04259630 n04263257 n04264628 n04265275 n04266014 n04270147 "
    "n04273569 n04275548 n04277352 n04285008 n04286575 n04296562 n04310018 n04311004 n04311174 n04317175 n04325704 "
    "n04326547 n04328186 n04330267 n04332243 n04335435 n04336792 n04344873 n04346328 n04347754 n04350905 n04355338 "
    "n04355933 n04356056 n04357314 n04366367 n04367480 n04370456 n04371430 n04371774 n04372370 n04376876 n04380533 "
    "n04389033 n04392985 n04398044 n04399382 n04404412 n04409515 n04417672 n04418357 n04423845 n04428191 n04429376 "
    "n04435653 n04442312 n04443257 n04447861 n04456115 n04458633 n04461696 n04462240 n04465501 n04467665 n04476259 "
    "n04479046 n04482393 n04483307 n04485082 n04486054 n04487081 n04487394 n04493381 n04501370 n04505470 n04507155 "
    "n04509417 n04515003 n04517823 n04522168 n04523525 n04525038 n04525305 n04532106 n04532670 n04536866 n04540053 "
    "n04542943 n04548280 n04548362 n04550184 n04552348 n04553703 n04554684 n04557648 n04560804 n04562935 n04579145 "
    "n04579432 n04584207 n04589890 n04590129 n04591157 n04591713 n04592741 n04596742 n04597913 n04599235 n04604644 "
    "n04606251 n04612504 n04613696 n06359193 n06596364 n06785654 n06794110 n06874185 n07248320 n07565083 n07579787 "
    "n07583066 n07584110 n07590611 n07613480 n07614500 n07615774 n07684084 n07693725 n07695742 n07697313 n07697537 "
    "n07711569 n07714571 n07714990 n07715103 n07716358 n07716906 n07717410 n07717556 n07718472 n07718747 n07720875 "
    "n07730033 n07734744 n07742313 n07745940 n07747607 n07749582 n07753113 n07753275 n07753592 n07754684 n07760859 "
    "n07768694 n07802026 n07831146 n07836838 n07860988 n07871810 n07873807 n07875152 n07880968 n07892512 n07920052 "
    "n07930864 n07932039 n09193705 n09229709 n09246464 n09256479 n09288635 n09332890 n09399592 n09421951 n09428293 "
    "n09468604 n09472597 n09835506 n10148035 n10565667 n11879895 n11939491 n12057211 n12144580 n12267677 n12620546 "
    "n12768682 n12985857 n12998815 n13037406 n13040303 n13044778 n13052670 n13054560 n13133613 n15075141"
).split()

ILSVRC_IDS = tuple((  # the devkit's order: ILSVRC2012_ID k (1-based) is ILSVRC_IDS[k - 1] (map_clsloc.txt, meta.mat)
    "n02119789 n02100735 n02110185 n02096294 n02102040 n02066245 n02509815 n02124075 n02417914 n02123394 n02125311 "
    "n02423022 n02346627 n02077923 n02110063 n02447366 n02109047 n02089867 n02102177 n02091134 n02092002 n02071294 "
    "n02442845 n02504458 n02092339 n02098105 n02096437 n02114712 n02105641 n02128925 n02091635 n02088466 n02096051 "
    "n02117135 n02138441 n02097130 n02493509 n02457408 n02389026 n02443484 n02110341 n02089078 n02086910 n02445715 "
    "n02093256 n02113978 n02106382 n02441942 n02113712 n02113186 n02105162 n02415577 n02356798 n02488702 n02123159 "
    "n02098413 n02422699 n02114855 n02094433 n02111277 n02132136 n02119022 n02091467 n02106550 n02422106 n02091831 "
    "n02120505 n02104365 n02086079 n02112706 n02098286 n02095889 n02484975 n02137549 n02500267 n02129604 n02090721 "
    "n02396427 n02108000 n02391049 n02412080 n02108915 n02480495 n02110806 n02128385 n02107683 n02085936 n02094114 "
    "n02087046 n02100583 n02096177 n02494079 n02105056 n02101556 n02123597 n02481823 n02105505 n02088094 n02085782 "
    "n02489166 n02364673 n02114548 n02134084 n02480855 n02090622 n02113624 n02093859 n02403003 n02097298 n02108551 "
    "n02493793 n02107142 n02096585 n02107574 n02107908 n02086240 n02102973 n02112018 n02093647 n02397096 n02437312 "
    "n02483708 n02097047 n02106030 n02099601 n02093991 n02110627 n02106166 n02326432 n02108089 n02097658 n02088364 "
    "n02111129 n02100236 n02486261 n02115913 n02486410 n02487347 n02099849 n02108422 n02104029 n02492035 n02110958 "
    "n02099429 n02094258 n02099267 n02395406 n02112350 n02109961 n02101388 n02113799 n02095570 n02128757 n02101006 "
    "n02115641 n02097209 n02342885 n02097474 n02120079 n02095314 n02088238 n02408429 n02133161 n02328150 n02410509 "
    "n02492660 n02398521 n02112137 n02510455 n02093428 n02105855 n02111500 n02085620 n02123045 n02490219 n02099712 "
    "n02109525 n02454379 n02111889 n02088632 n02090379 n02443114 n02361337 n02105412 n02483362 n02437616 n02107312 "
    "n02325366 n02091032 n02129165 n02102318 n02100877 n02074367 n02504013 n02363005 n02102480 n02113023 n02086646 "
    "n02497673 n02087394 n02127052 n02116738 n02488291 n02091244 n02114367 n02130308 n02089973 n02105251 n02134418 "
    "n02093754 n02106662 n02444819 n01882714 n01871265 n01872401 n01877812 n01873310 n01883070 n04086273 n04507155 "
    "n04147183 n04254680 n02672831 n02219486 n02317335 n01968897 n03452741 n03642806 n07745940 n02690373 n04552348 "
    "n02692877 n02782093 n04266014 n03344393 n03447447 n04273569 n03662601 n02951358 n04612504 n02981792 n04483307 "
    "n03095699 n03673027 n03947888 n02687172 n04347754 n04606251 n03478589 n04389033 n03773504 n02860847 n03218198 "
    "n02835271 n03792782 n03393912 n03895866 n02797295 n04204347 n03791053 n03384352 n03272562 n04310018 n02704792 "
    "n02701002 n02814533 n02930766 n03100240 n03594945 n03670208 n03770679 n03777568 n04037443 n04285008 n03444034 "
    "n03445924 n03785016 n04252225 n03345487 n03417042 n03930630 n04461696 n04467665 n03796401 n03977966 n04065272 "
    "n04335435 n04252077 n04465501 n03776460 n04482393 n04509417 n03538406 n03599486 n03868242 n02804414 n03125729 "
    "n03131574 n03388549 n02870880 n03018349 n03742115 n03016953 n04380533 n03337140 n03891251 n02791124 n04429376 "
    "n03376595 n04099969 n04344873 n04447861 n03179701 n03982430 n03201208 n03290653 n04550184 n07742313 n07747607 "
    "n07749582 n07753113 n07753275 n07753592 n07754684 n07760859 n07768694 n12267677 n12620546 n13133613 n11879895 "
    "n12144580 n12768682 n03854065 n04515003 n03017168 n03249569 n03447721 n03720891 n03721384 n04311174 n02787622 "
    "n02992211 n04536866 n03495258 n02676566 n03272010 n03110669 n03394916 n04487394 n03494278 n03840681 n03884397 "
    "n02804610 n03838899 n04141076 n03372029 n11939491 n12057211 n09246464 n09468604 n09193705 n09472597 n09399592 "
    "n09421951 n09256479 n09332890 n09428293 n09288635 n03498962 n03041632 n03658185 n03954731 n03995372 n03649909 "
    "n03481172 n03109150 n02951585 n03970156 n04154565 n04208210 n03967562 n03000684 n01514668 n01514859 n01518878 "
    "n01530575 n01531178 n01532829 n01534433 n01537544 n01558993 n01560419 n01580077 n01582220 n01592084 n01601694 "
    "n01608432 n01614925 n01616318 n01622779 n01795545 n01796340 n01797886 n01798484 n01806143 n01806567 n01807496 "
    "n01817953 n01818515 n01819313 n01820546 n01824575 n01828970 n01829413 n01833805 n01843065 n01843383 n01847000 "
    "n01855032 n01855672 n01860187 n02002556 n02002724 n02006656 n02007558 n02009912 n02009229 n02011460 n02012849 "
    "n02013706 n02018207 n02018795 n02025239 n02027492 n02028035 n02033041 n02037110 n02017213 n02051845 n02056570 "
    "n02058221 n01484850 n01491361 n01494475 n01496331 n01498041 n02514041 n02536864 n01440764 n01443537 n02526121 "
    "n02606052 n02607072 n02643566 n02655020 n02640242 n02641379 n01664065 n01665541 n01667114 n01667778 n01669191 "
    "n01675722 n01677366 n01682714 n01685808 n01687978 n01688243 n01689811 n01692333 n01693334 n01694178 n01695060 "
    "n01704323 n01697457 n01698640 n01728572 n01728920 n01729322 n01729977 n01734418 n01735189 n01737021 n01739381 "
    "n01740131 n01742172 n01744401 n01748264 n01749939 n01751748 n01753488 n01755581 n01756291 n01629819 n01630670 "
    "n01631663 n01632458 n01632777 n01641577 n01644373 n01644900 n04579432 n04592741 n03876231 n03483316 n03868863 "
    "n04251144 n03691459 n03759954 n04152593 n03793489 n03271574 n03843555 n04332243 n04265275 n04330267 n03467068 "
    "n02794156 n04118776 n03841143 n04141975 n02708093 n03196217 n04548280 n03544143 n04355338 n03891332 n04328186 "
    "n03197337 n04317175 n04376876 n03706229 n02841315 n04009552 n04356056 n03692522 n04044716 n02879718 n02950826 "
    "n02749479 n04090263 n04008634 n03085013 n04505470 n03126707 n03666591 n02666196 n02977058 n04238763 n03180011 "
    "n03485407 n03832673 n06359193 n03496892 n04428191 n04004767 n04243546 n04525305 n04179913 n03602883 n04372370 "
    "n03532672 n02974003 n03874293 n03944341 n03992509 n03425413 n02966193 n04371774 n04067472 n04040759 n04019541 "
    "n03492542 n04355933 n03929660 n02965783 n04258138 n04074963 n03208938 n02910353 n03476684 n03627232 n03075370 "
    "n03874599 n03804744 n04127249 n04153751 n03803284 n04162706 n04228054 n02948072 n03590841 n04286575 n04456115 "
    "n03814639 n03933933 n04485082 n03733131 n03794056 n04275548 n01768244 n01770081 n01770393 n01773157 n01773549 "
    "n01773797 n01774384 n01774750 n01775062 n01776313 n01784675 n01990800 n01978287 n01978455 n01980166 n01981276 "
    "n01983481 n01984695 n01985128 n01986214 n02165105 n02165456 n02167151 n02168699 n02169497 n02172182 n02174001 "
    "n02177972 n02190166 n02206856 n02226429 n02229544 n02231487 n02233338 n02236044 n02256656 n02259212 n02264363 "
    "n02268443 n02268853 n02276258 n02277742 n02279972 n02280649 n02281406 n02281787 n01910747 n01914609 n01917289 "
    "n01924916 n01930112 n01943899 n01944390 n01945685 n01950731 n01955084 n02319095 n02321529 n03584829 n03297495 "
    "n03761084 n03259280 n04111531 n04442312 n04542943 n04517823 n03207941 n04070727 n04554684 n03133878 n03400231 "
    "n04596742 n02939185 n03063689 n04398044 n04270147 n02699494 n04486054 n03899768 n04311004 n04366367 n04532670 "
    "n02793495 n03457902 n03877845 n03781244 n03661043 n02727426 n02859443 n03028079 n03788195 n04346328 n03956157 "
    "n04081281 n03032252 n03529860 n03697007 n03065424 n03837869 n04458633 n02980441 n04005630 n03461385 n02776631 "
    "n02791270 n02871525 n02927161 n03089624 n04200800 n04443257 n04462240 n03388043 n03042490 n04613696 n03216828 "
    "n02892201 n03743016 n02788148 n02894605 n03160309 n03000134 n03930313 n04604644 n04326547 n03459775 n04239074 "
    "n04501370 n03792972 n04149813 n03530642 n03961711 n03903868 n02814860 n07711569 n07720875 n07714571 n07714990 "
    "n07715103 n07716358 n07716906 n07717410 n07717556 n07718472 n07718747 n07730033 n07734744 n04209239 n03594734 "
    "n02971356 n03485794 n04133789 n02747177 n04125021 n07579787 n03814906 n03134739 n03404251 n04423845 n03877472 "
    "n04120489 n03062245 n03014705 n03717622 n03777754 n04493381 n04476259 n02777292 n07693725 n03998194 n03617480 "
    "n07590611 n04579145 n03623198 n07248320 n04277352 n04229816 n02823428 n03127747 n02877765 n04435653 n03724870 "
    "n03710637 n03920288 n03379051 n02807133 n04399382 n03527444 n03983396 n03924679 n04532106 n06785654 n03445777 "
    "n07613480 n04350905 n04562935 n03325584 n03045698 n07892512 n03250847 n04192698 n03026506 n03534580 n07565083 "
    "n04296562 n02869837 n07871810 n02799071 n03314780 n04141327 n04357314 n02823750 n13052670 n07583066 n03637318 "
    "n04599235 n07802026 n02883205 n03709823 n04560804 n02909870 n03207743 n04263257 n07932039 n03786901 n04479046 "
    "n03873416 n02999410 n04367480 n03775546 n07875152 n04591713 n04201297 n02916936 n03240683 n02840245 n02963159 "
    "n04370456 n03991062 n02843684 n03482405 n03942813 n03908618 n03902125 n07584110 n02730930 n04023962 n02769748 "
    "n10148035 n02817516 n03908714 n02906734 n03788365 n02667093 n03787032 n03980874 n03141823 n03976467 n04264628 "
    "n07930864 n04039381 n06874185 n04033901 n04041544 n07860988 n03146219 n03763968 n03676483 n04209133 n03782006 "
    "n03857828 n03775071 n02892767 n07684084 n04522168 n03764736 n04118538 n03887697 n13044778 n03291819 n03770439 "
    "n03124170 n04487081 n03916031 n02808440 n07697537 n12985857 n02917067 n03938244 n15075141 n02978881 n02966687 "
    "n03633091 n13040303 n03690938 n03476991 n02669723 n03220513 n03127925 n04584207 n07880968 n03937543 n03000247 "
    "n04418357 n04590129 n02795169 n04553703 n02783161 n02802426 n02808304 n03124043 n03450230 n04589890 n12998815 "
    "n02992529 n03825788 n02790996 n03710193 n03630383 n03347037 n03769881 n03871628 n03733281 n03976657 n03535780 "
    "n04259630 n03929855 n04049303 n04548362 n02979186 n06596364 n03935335 n06794110 n02825657 n03388183 n04591157 "
    "n04540053 n03866082 n04136333 n04026417 n02865351 n02834397 n03888257 n04235860 n04404412 n04371430 n03733805 "
    "n07920052 n07873807 n02895154 n04204238 n04597913 n04131690 n07836838 n09835506 n03443371 n13037406 n04336792 "
    "n04557648 n03187595 n04254120 n03595614 n04146614 n03598930 n03958227 n04069434 n03188531 n02786058 n07615774 "
    "n04525038 n04409515 n03424325 n03223299 n03680355 n07614500 n07695742 n04033995 n03710721 n04392985 n03047690 "
    "n03584254 n13054560 n10565667 n03950228 n03729826 n02837789 n04254777 n02988304 n03657121 n04417672 n04523525 "
    "n02815834 n09229709 n07697313 n03888605 n03355925 n03063599 n04116512 n04325704 n07831146 n03255030 "
).split())

WNID_INDEX = {wnid: i for i, wnid in enumerate(WNIDS)}
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


class ImageError(Exception):
    """An image file that cannot be decoded (raised in DataLoader workers; `guarded` turns it into one line)."""


# ----------------------------------------------------------------------------------------------------
# Layouts and label files.

def imagenet_folder(root, limit=0, labels=""):
    """(relative paths, int64 class indices, a line saying what was found) for an image folder in any layout above.
    limit > 0 keeps that many images evenly spaced over the sorted list, 0 keeps all."""
    if not root:
        die("no image folder given: pass --data /path/to/imagenet/val")
    if not os.path.isdir(root):
        die(f"image folder {root!r} {'is not a folder' if os.path.exists(root) else 'does not exist'}")
    entries = sorted(e for e in os.listdir(root) if not e.startswith("."))
    folders = [e for e in entries if os.path.isdir(os.path.join(root, e))]
    loose = [e for e in entries if e.lower().endswith(IMAGE_EXTENSIONS) and os.path.isfile(os.path.join(root, e))]
    torchvision_root = os.path.isfile(os.path.join(root, "meta.bin")) and os.path.isdir(os.path.join(root, "val"))
    if labels and (torchvision_root or not loose):
        die(f"--labels is for a flat folder of images; {root!r} {'is a torchvision ImageNet root' if torchvision_root else 'holds no images directly'} "
            f"(its labels come from the wnid folders): drop --labels")
    if torchvision_root:
        paths, classes = class_folders(root, "val")
        found = f"torchvision ImageNet root (val/<wnid>/, meta.bin): {len(paths)} images"
    elif loose:
        if not labels:
            die(f"{root!r} holds {len(loose)} images directly (the flat ILSVRC2012_img_val layout): pass their labels with --labels FILE "
                f"(ILSVRC2012_validation_ground_truth.txt, val.txt or LOC_val_solution.csv), or use the prepared layout root/<wnid>/*.JPEG")
        table, form = read_labels(labels)
        paths, classes = [], []
        for name in loose:
            entry = table.get(os.path.splitext(name)[0])
            if entry is None:
                die(f"{labels}: no label for image {name} in {root!r} (the file labels {len(table)} images)")
            paths.append(name)
            classes.append(entry[0])
        found = f"flat folder, labels from {labels} ({form}): {len(paths)} images, {len(paths)} of the file's {len(table)} labels used"
    elif folders:
        paths, classes = class_folders(root, "")
        found = f"prepared layout (<wnid>/ folders): {len(paths)} images"
    else:
        die(f"image folder {root!r} is empty")
    if not paths:
        die(f"image folder {root!r}: no images ({', '.join(IMAGE_EXTENSIONS)})")
    order = sorted(range(len(paths)), key=lambda i: (os.path.basename(paths[i]), paths[i]))
    paths, classes = [paths[i] for i in order], [classes[i] for i in order]
    if 0 < limit < len(paths):
        keep = np.unique(np.linspace(0, len(paths) - 1, limit).round().astype(int))
        paths, classes = [paths[i] for i in keep], [classes[i] for i in keep]
        found += f", {len(paths)} kept (--limit)"
    return paths, np.array(classes, dtype=np.int64), f"{found} in {len(set(classes))} classes"


def class_folders(root, sub):
    """(paths relative to root, class indices) of root/sub/<wnid>/**/<image>."""
    base = os.path.join(root, sub)
    folders = sorted(e for e in os.listdir(base) if not e.startswith(".") and os.path.isdir(os.path.join(base, e)))
    for name in folders:
        if not re.fullmatch(r"n\d{8}", name):
            die(f"{base!r} is not in the prepared layout: sub-folder {name!r} is not a wnid (expected {os.path.join(base, 'n01440764')}/*.JPEG)")
        if name not in WNID_INDEX:
            die(f"{base!r}: unknown wnid {name!r} (not one of the 1,000 ImageNet-1k classes)")
    paths, classes = [], []
    for name in folders:
        for folder, _subs, files in sorted(os.walk(os.path.join(base, name), followlinks=True)):
            for f in sorted(files):
                if f.lower().endswith(IMAGE_EXTENSIONS) and not f.startswith("."):
                    paths.append(os.path.relpath(os.path.join(folder, f), root))
                    classes.append(WNID_INDEX[name])
    if folders and not paths:
        die(f"image folder {base!r}: no images ({', '.join(IMAGE_EXTENSIONS)}) in its {len(folders)} class folders")
    return paths, classes


def read_labels(spec):
    """({image name without extension: (class index, line)}, the format found) from a label file, 'FILE' or
    'GROUND_TRUTH,MAP' (MAP: map_clsloc.txt or meta.mat for the devkit's ground truth)."""
    path, _, id_map = spec.partition(",")
    lines = read_lines(path)
    first = next(((n, line) for n, line in lines if line.strip()), None)
    if first is None:
        die(f"label file {path} is empty")
    n0, line0 = first
    tokens = line0.split()
    table = {}

    def put(name, index, n):
        if name in table:
            die(f"{path}, line {n}: duplicate label for image {name} (first on line {table[name][1]})")
        table[name] = (index, n)

    if line0.replace(" ", "").startswith("ImageId,PredictionString"):
        form = "Kaggle LOC_val_solution.csv"
        for n, row in enumerate(csv.reader(line for _, line in lines), start=1):
            if n == n0 or not row or not "".join(row).strip():
                continue
            wnid = row[1].split()[0] if len(row) == 2 and row[1].split() else None
            if wnid is None:
                die(f"{path}, line {n}: expected ImageId,PredictionString with a wnid first, found {','.join(row)[:60]!r}")
            if wnid not in WNID_INDEX:
                die(f"{path}, line {n}: unknown wnid {wnid!r} (not one of the 1,000 ImageNet-1k classes)")
            put(os.path.splitext(row[0].strip())[0], WNID_INDEX[wnid], n)
    elif len(tokens) == 1 and tokens[0].isdigit():
        wnids, source = id_to_wnid(path, id_map)
        form = f"devkit ground truth, ILSVRC ids mapped by {source}"
        for i, (n, line) in enumerate(((n, line) for n, line in lines if line.strip()), start=1):
            if not line.strip().isdigit():
                die(f"{path}, line {n}: expected one ILSVRC id (1..1000) per line, found {line.strip()[:60]!r}")
            k = int(line)
            if not 1 <= k <= 1000:
                die(f"{path}, line {n}: ILSVRC id {k} is out of range 1..1000")
            put(f"ILSVRC2012_val_{i:08d}", WNID_INDEX[wnids[k - 1]], n)
    elif len(tokens) == 2 and re.fullmatch(r"-?\d+", tokens[1]):
        form = "two columns: file name, class index 0..999"
        for n, line in lines:
            if not line.strip():
                continue
            t = line.split()
            if len(t) != 2 or not re.fullmatch(r"-?\d+", t[1]):
                die(f"{path}, line {n}: expected '<file name> <class index 0..999>', found {line.strip()[:60]!r}")
            if not 0 <= int(t[1]) <= 999:
                die(f"{path}, line {n}: class index {t[1]} is out of range 0..999")
            put(os.path.splitext(os.path.basename(t[0]))[0], int(t[1]), n)
    else:
        die(f"{path}, line {n0}: {line0.strip()[:60]!r} matches none of the label formats (devkit ground truth: one ILSVRC id "
            f"per line; val.txt: '<file name> <class index>'; Kaggle: 'ImageId,PredictionString' header)")
    return table, form


def read_lines(path):
    """[(line number, text)] of a text file; one-line errors for a missing or unreadable file."""
    if not os.path.isfile(path):
        die(f"label file {path!r} {'is not a file' if os.path.exists(path) else 'does not exist'}")
    try:
        with open(path, encoding="utf-8-sig") as f:
            return list(enumerate(f.read().splitlines(), start=1))
    except (OSError, UnicodeDecodeError) as e:
        die(f"cannot read label file {path} ({type(e).__name__})")


def id_to_wnid(ground_truth, id_map):
    """(wnid of ILSVRC id 1..1000, where the map came from): the map file given, or map_clsloc.txt / meta.mat next to
    the ground truth, else ILSVRC_IDS."""
    if not id_map:
        near = [os.path.join(os.path.dirname(ground_truth), f) for f in ("map_clsloc.txt", "meta.mat")]
        id_map = next((p for p in near if os.path.isfile(p)), "")
    if not id_map:
        return ILSVRC_IDS, "the devkit's order (no map_clsloc.txt or meta.mat given or next to the file)"
    if id_map.endswith(".mat"):
        try:
            import scipy.io
        except ImportError:
            return ILSVRC_IDS, f"the devkit's order ({id_map} needs scipy to read; pass map_clsloc.txt to use a file)"
        synsets = scipy.io.loadmat(id_map, squeeze_me=True)["synsets"]
        pairs = {int(s["ILSVRC2012_ID"]): str(s["WNID"]) for s in synsets if int(s["ILSVRC2012_ID"]) <= 1000}
        return tuple(pairs[k] for k in range(1, 1001)), id_map
    pairs = {}
    for n, line in read_lines(id_map):
        t = line.split()
        if not t:
            continue
        if len(t) < 2 or not t[1].isdigit() or t[0] not in WNID_INDEX or not 1 <= int(t[1]) <= 1000:
            die(f"{id_map}, line {n}: expected '<wnid> <ILSVRC id 1..1000> <name>' (map_clsloc.txt), found {line.strip()[:60]!r}")
        if int(t[1]) in pairs:
            die(f"{id_map}, line {n}: duplicate ILSVRC id {t[1]}")
        pairs[int(t[1])] = t[0]
    if len(pairs) != 1000:
        die(f"{id_map}: maps {len(pairs)} ILSVRC ids, expected 1,000")
    return tuple(pairs[k] for k in range(1, 1001)), id_map


# ----------------------------------------------------------------------------------------------------
# Generated data for smoke runs, decoding, and the views (one decode per image).

def write_fake_imagenet(folder, n, predict=None):
    """n generated 500 x 375 JPEGs (smooth colour plus noise: about ImageNet's mean size and file size) in the prepared
    layout, folder/<wnid>/fake_00000000.JPEG, ...; files already there are kept. For smoke runs and benchmarks without
    ImageNet. Without `predict` the wnids go round-robin and the labels mean nothing. With `predict` (uint8 eval views
    (B, 3, 224, 224) -> class indices), each image is filed under the class the model predicts on its eval view:
    self-labelled data, on which the unablated top-1 is 100% by construction, so ablation ratios have values."""
    from multiprocessing import Pool
    made = {f for _, _, files in os.walk(folder) for f in files} if os.path.isdir(folder) else set()
    todo = [i for i in range(n) if f"fake_{i:08d}.JPEG" not in made]
    if not todo:
        return
    print(f"writing {len(todo)} generated JPEGs into {folder}" + (" (labelled with the model's predictions)" if predict else ""))
    if predict is None:
        with Pool(max(1, min(16, os.cpu_count() or 1))) as pool:
            pool.map(_write_fake, [(folder, i, os.path.join(folder, WNIDS[i % 1000])) for i in todo], chunksize=64)
        return
    staging = os.path.join(folder, ".staging")
    for start in range(0, len(todo), 64):
        chunk = todo[start:start + 64]
        for i in chunk:
            _write_fake((folder, i, staging))
        paths = [os.path.join(staging, f"fake_{i:08d}.JPEG") for i in chunk]
        labels = predict(torch.stack([eval_views(decode_rgb(p), [0])[0] for p in paths]))
        for path, label in zip(paths, labels.tolist()):
            os.makedirs(os.path.join(folder, WNIDS[label]), exist_ok=True)
            os.replace(path, os.path.join(folder, WNIDS[label], os.path.basename(path)))
    os.rmdir(staging)


def _write_fake(args):
    from PIL import Image
    folder, i, into = args
    rng = np.random.default_rng(i)
    os.makedirs(into, exist_ok=True)
    low = Image.fromarray(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)).resize((500, 375), Image.BICUBIC)
    pixels = np.asarray(low, dtype=np.float32) + rng.normal(0, 10, (375, 500, 3))
    image = Image.fromarray(pixels.clip(0, 255).astype(np.uint8))
    atomic_write(os.path.join(into, f"fake_{i:08d}.JPEG"), lambda tmp: image.save(tmp, format="JPEG", quality=90))


def decode_rgb(path):
    """A PIL image in RGB, whatever its mode (grayscale, CMYK, palette, with alpha)."""
    from PIL import Image
    try:
        with Image.open(path) as im:
            if im.mode == "P" and "transparency" in im.info:
                im = im.convert("RGBA")
            return im.convert("RGB")
    except Exception as e:
        raise ImageError(f"cannot read image {path} ({type(e).__name__}: {str(e).splitlines()[0][:100] if str(e) else ''})") from None


def crop_size(percent, released=False):
    """docs/method.md section 5's scale transform crops 256 - floor(256 p / 100) px (231 at 10 %, 128 at 50 %);
    released: the released scale_robust.py's crop at its scale 1 + p / 100, CenterCrop(int(224 (2 - scale))), i.e.
    floor(224 (100 - p) / 100) px (201 at 10 %, 112 at 50 %), in integers (the same sizes at 10..50 %)."""
    if released:
        return (224 * (100 - int(percent))) // 100
    return 256 - (256 * int(percent)) // 100


def eval_views(image, scales, released_crop=False):
    """uint8 (len(scales), 3, 224, 224) views of one decoded PIL image: resize the shorter side to 256, then
    scale 0 = center-crop 224 (the standard eval transform), scale p = center-crop crop_size(p, released_crop), resize
    to 224.

    All resizing is torchvision.transforms.functional on PIL images, bilinear (PIL's, antialiased: the same
    as torchvision's standard ImageNet eval transform Resize(256) + CenterCrop(224))."""
    import torchvision.transforms.functional as TF
    bilinear = TF.InterpolationMode.BILINEAR
    base = TF.resize(image, 256, interpolation=bilinear)
    views = []
    for p in scales:
        view = (TF.center_crop(base, 224) if p == 0 else
                TF.resize(TF.center_crop(base, crop_size(p, released_crop)), [224, 224], interpolation=bilinear))
        views.append(TF.pil_to_tensor(view))
    return torch.stack(views)


def zoom_views(image, fractions, eval_view=True):
    """uint8 (2 k + 1, 3, 224, 224), k the fractions below 1: zoomed copies of one decoded PIL image's eval view (resize 256,
    center-crop 224), from the most zoomed out to the most zoomed in. For each crop fraction f < 1: zoom out f (the
    view shrunk to round(224 f) px, bilinear, centered on a canvas of the ImageNet mean colour) and zoom in 1/f (the
    center round(224 f) px of the view, bilinear resize to 224); f = 1 is the view itself. zooms(fractions) lists
    the zoom factors in the same order. eval_view=False: the image is the 224 x 224 view already (an FZ)."""
    import torchvision.transforms.functional as TF
    from PIL import Image
    bilinear = TF.InterpolationMode.BILINEAR
    view = TF.center_crop(TF.resize(image, 256, interpolation=bilinear), 224) if eval_view else image
    if view.size != (224, 224):
        raise ValueError(f"zoom_views: a view is 224 x 224, not {view.size[0]} x {view.size[1]}")
    fill = tuple(round(255 * m) for m in MEAN)
    out = []
    for f in sorted(f for f in fractions if f < 1):  # zoom out: 0.5x first
        side = round(224 * f)
        canvas = Image.new("RGB", (224, 224), fill)
        canvas.paste(TF.resize(view, [side, side], interpolation=bilinear), ((224 - side) // 2, (224 - side) // 2))
        out.append(canvas)
    out.append(view)
    for f in sorted((f for f in fractions if f < 1), reverse=True):  # zoom in: 1/0.9 first, 2x last
        out.append(TF.resize(TF.center_crop(view, round(224 * f)), [224, 224], interpolation=bilinear))
    return torch.stack([TF.pil_to_tensor(v) for v in out])


def zooms(fractions):
    """The zoom factor of each of zoom_views' views, in order: f (out) ascending, 1, then 1/f ascending."""
    small = sorted(f for f in fractions if f < 1)
    return small + [1.0] + [1 / f for f in reversed(small)]


class ZoomFolder(torch.utils.data.Dataset):
    """Item i: (uint8 zoom views of image ids[i] from ONE decode, i)."""

    def __init__(self, root, paths, ids, fractions):
        self.root, self.paths, self.ids, self.fractions = root, list(paths), list(ids), list(fractions)

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return zoom_views(decode_rgb(os.path.join(self.root, self.paths[self.ids[i]])), self.fractions), i


class ImageNetFolder(torch.utils.data.Dataset):
    """Item i: (uint8 views (len(scales), 3, 224, 224) from ONE decode of image i, its label, i); released_crop: the
    released scripts' crop sizes (crop_size)."""

    def __init__(self, root, paths, labels, scales=(0,), released_crop=False):
        self.root, self.paths, self.labels, self.scales = root, list(paths), np.asarray(labels), list(scales)
        self.released_crop = released_crop

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        image = decode_rgb(os.path.join(self.root, self.paths[i]))
        return eval_views(image, self.scales, self.released_crop), int(self.labels[i]), i


def image_loader(dataset, batch, workers=-1, device="cpu", start=0):
    """A DataLoader in dataset order from image `start` on; workers=-1: one per CPU core (at most 16)."""
    if workers < 0:
        workers = min(16, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
    if start:
        dataset = torch.utils.data.Subset(dataset, range(start, len(dataset)))
    return torch.utils.data.DataLoader(dataset, batch_size=batch, shuffle=False, num_workers=workers,
                                       pin_memory=torch.device(device).type == "cuda", persistent_workers=workers > 0,
                                       worker_init_fn=release_inherited_locks,
                                       prefetch_factor=2 if workers else None)


def guarded(loader):
    """Iterate a loader; an unreadable image ends the script with one line naming it."""
    try:
        yield from loader
    except ImageError as e:  # raised here, or re-raised from a worker with its traceback in the text
        text = str(e)
        die(text[text.rindex("cannot read image"):].splitlines()[0] if "cannot read image" in text else "cannot read an image")


def resumable_pass(loader_at, step, state, save, total, every, desc):
    """One pass over a dataset that survives Ctrl-C, SIGTERM and kill -9: the loop the scripts' image passes share.

    state: a dict whose "done" counts the images in so far (0 for a fresh pass, a saved state's count to resume);
    loader_at(done): the loader from image `done` on; step(state, batch) -> the state with that batch in (a new
    dict, or the same one with "done" raised last, so that an interruption inside a step leaves the state as it was
    before it: at most the batch in flight is lost). save(state) runs every `every` seconds while images are left,
    on any exception once some are in, and at the end. Runs under torch.inference_mode with a tqdm bar; an
    unreadable image ends the script with one line (guarded). Returns the final state."""
    if state["done"] >= total:
        return state
    bar = tqdm(total=total, initial=state["done"], unit="img", desc=desc, dynamic_ncols=True)
    last_save = time.time()
    try:
        with torch.inference_mode():
            for batch in guarded(loader_at(state["done"])):
                before = state["done"]
                state = step(state, batch)
                bar.update(state["done"] - before)
                if time.time() - last_save > every and state["done"] < total:
                    save(state)
                    last_save = time.time()
    except BaseException:
        if state["done"]:
            save(state)
        raise
    finally:
        bar.close()
    save(state)
    return state
