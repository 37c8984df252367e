"""Radiology trauma eponyms the ICD-10-CM index does not carry, as the anatomical injury a coder looks up instead.

The index names some fractures by eponym ("Colles' fracture" S52.53-, "Bennett's fracture" S62.21-, "LeFort II"
S02.412, "Hill-Sachs" S42.29-, "Maisonneuve's" S82.86-); radiology uses many more, and for those a coder translates
the eponym into its site and type and follows "Fracture, traumatic - <bone> - <part>" (or "Sprain", "Dislocation",
"Strain") in the index. Each entry below is that translation: the eponym's wording, the index path it stands for
(kept as a comment) and the code that path gives, cut to the level the tabular list names without laterality or
encounter. A label that names only the eponym ("Jefferson fracture") then matches the injury's code rather than
"Fracture NOS" (T14.8).

How the list was chosen (#16, round 6): the trauma names among the 1,500 most frequent RP3D disorder names whose
eponym has no entry in the bundled FY2025 index (checked with a search of its terms), plus the standard eponyms of the
same injuries (reverse and variant forms); the translation is the textbook definition of each eponym. Eponyms whose
site or type is ambiguous (Morel-Lavallée, Pott, Dupuytren) or that name a disease too (the Perthes lesion of the
labrum, Perthes disease of the hip) are left out. Every code is checked to be a valid code of
the bundled table (tests/test_icd_matching.py).
"""

from __future__ import annotations

EPONYMS: tuple[tuple[str, str], ...] = (
    # spine
    ("Jefferson fracture", "S12.0"),  # burst of the atlas: Fracture, traumatic - vertebra - cervical - first
    ("Hangman fracture", "S12.1"),  # traumatic spondylolisthesis of C2: Fracture - vertebra - cervical - second
    ("Clay-shoveler fracture", "S12.6"),  # spinous process avulsion, classically C7: ... - cervical - seventh
    ("Chance fracture", "S32.0"),  # flexion-distraction of the thoracolumbar junction, classically L1-L2: ... - lumbar
    # pelvis and hip
    ("Malgaigne fracture", "S32.81"),  # vertical shear: Fracture - pelvis - multiple - with disruption of pelvic ring
    ("Duverney fracture", "S32.3"),  # iliac wing: Fracture - ilium
    # upper limb
    ("Chauffeur fracture", "S52.51"),  # radial styloid: Fracture - radius - lower end - styloid process
    ("Hutchinson fracture", "S52.51"),  # the chauffeur fracture
    ("Reverse Barton fracture", "S52.56"),  # volar rim of the distal radius: the index's Barton's fracture
    ("Essex-Lopresti fracture", "S52.12"),  # radial head with DRUJ disruption: Fracture - radius - upper end - head
    ("Piedmont fracture", "S52.37"),  # the Galeazzi fracture
    ("Nightstick fracture", "S52.2"),  # isolated ulnar shaft: Fracture - ulna - shaft
    ("Holstein-Lewis fracture", "S42.3"),  # distal third of the humeral shaft: Fracture - humerus - shaft
    ("Boxer fracture", "S62.33"),  # fifth metacarpal neck: Fracture - metacarpal - neck
    ("Reverse Bennett fracture", "S62.31"),  # base of the fifth metacarpal: Fracture - metacarpal - base
    ("Epibasal fracture of the thumb", "S62.23"),  # extra-articular base of the first metacarpal: Fracture - metacarpal - first - base
    ("Stener lesion", "S63.64"),  # displaced thumb ulnar collateral ligament: Sprain - thumb - metacarpophalangeal
    ("Gamekeeper thumb", "S63.64"),  # thumb ulnar collateral ligament
    ("Skier thumb", "S63.64"),  # thumb ulnar collateral ligament
    ("Bankart lesion", "S43.49"),  # anteroinferior glenoid labrum: the index's "anterior labral" S43.49- (S43.43 is SLAP)
    ("Reverse Bankart lesion", "S43.49"),  # posteroinferior glenoid labrum
    ("Bony Bankart lesion", "S42.14"),  # glenoid rim fracture: Fracture - scapula - glenoid cavity
    # lower limb
    ("Segond fracture", "S82.1"),  # lateral tibial plateau avulsion: Fracture - tibia - upper end
    ("Reverse Segond fracture", "S82.1"),  # medial tibial plateau avulsion
    ("Bumper fracture", "S82.1"),  # tibial plateau
    ("Toddler fracture", "S82.2"),  # spiral tibial shaft: Fracture - tibia - shaft
    ("Triplane fracture", "S89.1"),  # Salter-Harris IV of the distal tibia: Fracture - tibia - lower end - physeal
    ("Tillaux fracture", "S89.1"),  # Salter-Harris III of the distal tibia
    ("Hoffa fracture", "S72.4"),  # coronal femoral condyle: Fracture - femur - lower end - condyle
    ("Pseudo-Jones fracture", "S92.3"),  # avulsion of the fifth metatarsal base: Fracture - metatarsal
    ("Jones fracture", "S92.3"),  # fifth metatarsal metadiaphysis: Fracture - metatarsal - fifth
    ("Lisfranc injury", "S93.3"),  # tarsometatarsal: Dislocation - tarsometatarsal joint
    ("Lisfranc fracture-dislocation", "S93.3"),
    ("Chopart fracture-dislocation", "S93.3"),  # midtarsal: Dislocation - midtarsal joint
    ("Aviator astragalus", "S92.1"),  # talar neck: Fracture - talus - neck
    ("Shepherd fracture", "S92.1"),  # posterior process of the talus
    ("Tennis leg", "S86.1"),  # medial gastrocnemius: Strain - muscle - calf, posterior group
)
