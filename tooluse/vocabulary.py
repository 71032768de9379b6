"""The words the word-problem families fill their phrasings with (names, goods, units, places), and the
price drawing both family modules share. Module level, so a test can tell a phrasing from its fillers."""
from fractions import Fraction as F

CHILDREN = ["小明", "小红", "小刚", "小丽", "小华", "小军", "小芳", "小亮", "小雨", "小杰", "乐乐", "朵朵"]
ADULTS = ["王阿姨", "李叔叔", "张老师", "妈妈", "爸爸", "奶奶", "刘阿姨", "陈叔叔"]
BUYERS = CHILDREN + ADULTS
# relatives with the range of years they are older than a child
RELATIVES = [("爸爸", 24, 40), ("妈妈", 22, 38), ("叔叔", 18, 32), ("姑姑", 16, 30), ("爷爷", 48, 62),
             ("奶奶", 46, 60), ("哥哥", 2, 8), ("姐姐", 2, 8)]
# goods: name, measure word, lowest and highest price in 元
GOODS = [("苹果", "千克", 4, 12), ("香蕉", "千克", 3, 8), ("铅笔", "支", 1, 3), ("笔记本", "本", 3, 12),
         ("面包", "个", 2, 9), ("牛奶", "盒", 3, 6), ("足球", "个", 45, 120), ("故事书", "本", 12, 40),
         ("毛巾", "条", 8, 25), ("大米", "袋", 40, 90), ("矿泉水", "瓶", 1, 4), ("西瓜", "个", 12, 35),
         ("橡皮", "块", 1, 3), ("水彩笔", "盒", 10, 30), ("鸡蛋", "千克", 8, 14), ("酸奶", "杯", 4, 9)]
# things sold at a discount: name, measure word, lowest and highest price in 元
BIG_GOODS = [("衣服", "件", 80, 400), ("书包", "个", 60, 200), ("台灯", "台", 50, 180), ("自行车", "辆", 300, 900),
             ("运动鞋", "双", 120, 500), ("电饭煲", "台", 150, 600), ("羽毛球拍", "副", 60, 300)]
# things shared or packed: name, measure word
COUNTABLES = [("糖果", "颗"), ("苹果", "个"), ("铅笔", "支"), ("练习本", "本"), ("饼干", "块"), ("橘子", "个"),
              ("贴纸", "张"), ("气球", "个"), ("鸡蛋", "个")]
CONTAINERS = ["盒", "箱", "袋", "包", "筐"]
SAVINGS_GOALS = ["一个足球", "一本故事书", "一盒水彩笔", "一个书包", "一副羽毛球拍", "一个文具盒", "一套绘本"]
# movers: subject (None: a child's name), verb, speed range, distance unit, time unit
MOVERS = [("一辆汽车", "行驶", 40, 90, "千米", "小时"), ("一列火车", "行驶", 80, 160, "千米", "小时"),
          ("一艘轮船", "航行", 18, 36, "千米", "小时"), (None, "骑行", 10, 18, "千米", "小时"),
          (None, "步行", 55, 90, "米", "分钟"), ("一辆货车", "行驶", 40, 80, "千米", "小时")]
# rectangles: what, length unit, size range
RECTANGLES = [("一块长方形菜地", "米", 5, 30), ("一个长方形花坛", "米", 2, 12), ("一张长方形桌面", "厘米", 40, 150),
              ("一块长方形草坪", "米", 8, 40), ("一张长方形纸", "厘米", 10, 30), ("一个长方形游泳池", "米", 10, 50)]
SQUARES = [("一块正方形手帕", "厘米", 20, 40), ("一块正方形地砖", "厘米", 30, 80), ("一个正方形花坛", "米", 2, 10),
           ("一块正方形菜地", "米", 5, 25), ("一张正方形桌面", "厘米", 60, 120)]
# unit conversions: big unit, small unit, factor, a thing measured in them ("" when none reads well)
CONVERSIONS = [("米", "厘米", 100, "一根绳子长"), ("千米", "米", 1000, "从家到学校的路程是"),
               ("千克", "克", 1000, "一袋面粉重"), ("吨", "千克", 1000, "一辆卡车装了"),
               ("小时", "分钟", 60, "做完作业用了"), ("分钟", "秒", 60, "跑完一圈用了"),
               ("元", "角", 10, "一支笔的价格是"), ("元", "分", 100, "一块橡皮的价格是"),
               ("升", "毫升", 1000, "一桶水有")]
CITIES = ["北京", "哈尔滨", "沈阳", "兰州", "乌鲁木齐", "呼和浩特"]
CHINESE_DIGITS = "零一二三四五六七八九"
# 打折: how a discount is said, and the fraction of the price paid
DISCOUNTS = [("九", F(9, 10)), ("八", F(8, 10)), ("七", F(7, 10)), ("六", F(6, 10)), ("五", F(5, 10)),
             ("九五", F(95, 100)), ("八五", F(85, 100)), ("七五", F(75, 100)), ("八八", F(88, 100))]


def draw_price(rng, lo: int, hi: int) -> F:
    """A price in [lo, hi] 元: whole mostly, sometimes half a yuan or one decimal (3.8元); whole for big goods."""
    r = rng.random()
    if hi > 30 or r < 0.5:
        return F(rng.randint(lo, hi))
    if r < 0.8:
        return F(rng.randint(2 * lo, 2 * hi), 2)
    return F(rng.randint(10 * lo, 10 * hi), 10)
